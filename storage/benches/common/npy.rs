//! A reader for `.npy` files holding little-endian `f4`/`i4` arrays in C order, shared by the
//! benchmarks that read bench-kit datasets (`storage/benches/engine.rs`, `tests/benches/server.rs`,
//! both through `#[path]`). It lives under `common/` so that cargo does not take it for a bench target.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

/// An array read from a `.npy` file.
pub(crate) struct Array {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Data,
}

pub(crate) enum Data {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

impl Array {
    /// The array as an `f32` matrix: (row-major data, columns). A 1-d array is one column.
    pub(crate) fn into_f32_matrix(self) -> Result<(Vec<f32>, usize)> {
        let cols = match self.shape.as_slice() {
            [_] => 1,
            [_, cols] => *cols,
            other => bail!("expected a matrix, got shape {other:?}"),
        };
        match self.data {
            Data::F32(values) => Ok((values, cols)),
            Data::I32(_) => bail!("expected float32 data, got int32"),
        }
    }

    /// The values of an `i32` array, in C order.
    pub(crate) fn into_i32(self) -> Result<Vec<i32>> {
        match self.data {
            Data::I32(values) => Ok(values),
            Data::F32(_) => bail!("expected int32 data, got float32"),
        }
    }
}

/// Reads and validates `path`: magic, version, header dict (`descr` `<f4` or `<i4`,
/// `fortran_order` False, `shape`), and a data size that matches the shape exactly. The data
/// is read straight into the returned vector, so the file is never held twice in memory.
pub(crate) fn read(path: &Path) -> Result<Array> {
    let context = || format!("reading {}", path.display());
    let mut file = File::open(path).with_context(context)?;
    let file_len = file.metadata().with_context(context)?.len();
    let mut prefix = vec![0u8; (file_len.min(1 << 16)) as usize];
    file.read_exact(&mut prefix).with_context(context)?;
    let header = parse_header(&prefix).map_err(|err| anyhow!("{}: {err}", path.display()))?;
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .context("shape overflows")?;
    let data_len = file_len.saturating_sub(header.data_start as u64);
    if count.checked_mul(4).map(|n| n as u64) != Some(data_len) {
        bail!(
            "{}: data is {data_len} bytes, shape {:?} needs {count} x 4",
            path.display(),
            header.shape
        );
    }
    file.seek(SeekFrom::Start(header.data_start as u64))
        .with_context(context)?;
    let data = if header.is_float {
        let mut values = vec![0f32; count];
        file.read_exact(bytemuck::cast_slice_mut(&mut values))
            .with_context(context)?;
        for value in &mut values {
            *value = f32::from_bits(u32::from_le(value.to_bits()));
        }
        Data::F32(values)
    } else {
        let mut values = vec![0i32; count];
        file.read_exact(bytemuck::cast_slice_mut(&mut values))
            .with_context(context)?;
        for value in &mut values {
            *value = i32::from_le(*value);
        }
        Data::I32(values)
    };
    Ok(Array {
        shape: header.shape,
        data,
    })
}

struct Header {
    is_float: bool,
    shape: Vec<usize>,
    data_start: usize,
}

fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy file".into());
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        version => return Err(format!("unsupported .npy version {version}")),
    };
    let data_start = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or("truncated or oversized header")?;
    let header =
        std::str::from_utf8(&bytes[header_start..data_start]).map_err(|_| "header is not text")?;
    let descr = dict_value(header, "descr").ok_or("no descr")?;
    let fortran = dict_value(header, "fortran_order").ok_or("no fortran_order")?;
    if !fortran.starts_with("False") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_text = dict_value(header, "shape").ok_or("no shape")?;
    let shape_text = shape_text
        .strip_prefix('(')
        .and_then(|rest| rest.split_once(')'))
        .map(|(inside, _)| inside)
        .ok_or("shape is not a tuple")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<usize>()
                .map_err(|_| format!("bad shape entry {part:?}"))
        })
        .collect::<std::result::Result<Vec<usize>, String>>()?;
    let is_float = if descr.starts_with("'<f4'") {
        true
    } else if descr.starts_with("'<i4'") {
        false
    } else {
        return Err(format!(
            "unsupported dtype {}",
            descr.split(',').next().unwrap_or("")
        ));
    };
    Ok(Header {
        is_float,
        shape,
        data_start,
    })
}

/// The text after `'key':` in a Python dict literal, leading spaces removed.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))?;
    let rest = &header[at + key.len() + 2..];
    Some(rest.trim_start().strip_prefix(':')?.trim_start())
}
