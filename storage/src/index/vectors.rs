//! A borrowed, row-major view of the vectors an index searches.

/// Row-major vectors of one dimension; the row index is the node id.
///
/// This is a snapshot: an index built over more nodes than this view holds ignores the nodes past
/// its end.
#[derive(Debug, Clone, Copy)]
pub struct Vectors<'a> {
    data: &'a [f32],
    dim: usize,
    len: usize,
}

impl<'a> Vectors<'a> {
    /// Views `data` as rows of `dim` components.
    ///
    /// A trailing partial row is ignored, `dim == 0` gives an empty view, and at most
    /// `u32::MAX` rows are addressable (node ids are `u32`, and `u32::MAX` is reserved).
    pub fn new(data: &'a [f32], dim: usize) -> Self {
        let len = data
            .len()
            .checked_div(dim)
            .unwrap_or(0)
            .min(u32::MAX as usize);
        Vectors {
            data: &data[..len * dim],
            dim,
            len,
        }
    }

    /// Number of rows.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no rows.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Components per row.
    #[inline]
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The row of `node`.
    ///
    /// # Panics
    ///
    /// If `node >= self.len()`.
    #[inline]
    pub fn get(&self, node: u32) -> &'a [f32] {
        let start = node as usize * self.dim;
        &self.data[start..start + self.dim]
    }
}
