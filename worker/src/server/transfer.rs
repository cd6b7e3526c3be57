//! Copying a tenant's files to or from another worker (a move), one step per message
//! (`TransferTenant`): listing, reading, staging, committing or dropping them, ciphertext only
//! (`storage::engine::transfer`). Each step runs on a blocking thread under the tenant's gate,
//! held exclusively, and only for a tenant not assigned on this connection: its files must not
//! change while they are copied, and a request must not load it while they are replaced. The
//! exceptions only read: a live listing and reading a file, with which a replica catches up from
//! a copy that keeps serving.

use storage::engine::transfer::{ExportFile, ImportLimits};

use super::*;

use cluster::transfer_tenant::Step;

/// Largest piece of a file read in one step.
const MAX_READ_BYTES: u32 = 8 << 20;

fn to_proto(file: ExportFile) -> cluster::TenantFile {
    cluster::TenantFile {
        path: file.path,
        len: file.len,
        sha256: file.sha256.to_vec(),
    }
}

fn from_proto(file: cluster::TenantFile) -> Result<ExportFile, Error> {
    let sha256: [u8; 32] = file.sha256.as_slice().try_into().map_err(|_| {
        Error::InvalidArgument(format!("the digest of {:?} is not 32 bytes", file.path))
    })?;
    Ok(ExportFile {
        path: file.path,
        len: file.len,
        sha256,
    })
}

/// Runs one step against the engine, under the tenant's gate. `cold_root` is this worker's cold
/// storage. A paused tenant's files there are listed and read from there (a drain copies it to
/// another worker as it is) and dropped with the rest; nothing is imported over them (the
/// coordinator moves a paused tenant's files only whole).
fn run(
    engine: &Engine,
    tenant: &TenantId,
    step: Step,
    cold_root: &std::path::Path,
) -> Result<Body, Error> {
    let on_cold = cold_root.join(tenant.as_str()).exists();
    let imports = matches!(
        step,
        Step::ImportBegin(_)
            | Step::ImportPiece(_)
            | Step::ImportCommit(_)
            | Step::ImportReuse(_)
            | Step::ImportStaged(_)
    );
    if on_cold && imports {
        return Err(Error::FailedPrecondition(format!(
            "tenant {tenant} is paused on cold storage here; nothing is imported over it"
        )));
    }
    let mut answer = cluster::TransferTenantResponse::default();
    match step {
        Step::ExportFiles(export) => {
            let files = if on_cold {
                engine.export_cold_files(tenant, cold_root)?
            } else if export.live {
                engine.export_files_live(tenant)?
            } else {
                engine.export_files(tenant)?
            };
            answer.files = files.into_iter().map(to_proto).collect();
        }
        Step::ReadFile(read) => {
            let max_len = read.max_len.min(MAX_READ_BYTES) as usize;
            answer.data = if on_cold {
                engine.read_cold_export(tenant, cold_root, &read.path, read.offset, max_len)?
            } else {
                engine.read_export(tenant, &read.path, read.offset, max_len)?
            };
        }
        Step::ImportBegin(begin) => {
            let limits = ImportLimits {
                max_files: begin.max_files as usize,
                max_bytes: begin.max_bytes,
            };
            engine.begin_import(tenant, limits)?;
        }
        Step::ImportPiece(piece) => {
            engine.write_import(tenant, &piece.path, piece.offset, &piece.data)?;
        }
        Step::ImportCommit(commit) => {
            let files = commit
                .files
                .into_iter()
                .map(from_proto)
                .collect::<Result<Vec<_>, _>>()?;
            engine.commit_import(tenant, &files)?;
            if commit.to_cold {
                engine.move_to_cold(tenant, cold_root)?;
            }
        }
        Step::ImportReuse(reuse) => {
            let files = reuse
                .files
                .into_iter()
                .map(from_proto)
                .collect::<Result<Vec<_>, _>>()?;
            engine.reuse_import(tenant, &files)?;
        }
        Step::ImportStaged(_) => {
            answer.files = engine
                .staged_files(tenant)?
                .into_iter()
                .map(to_proto)
                .collect();
        }
        Step::ImportAbort(_) => engine.abort_import(tenant)?,
        Step::DropFiles(_) => {
            engine.abort_import(tenant)?;
            engine.delete_tenant(tenant)?;
            engine.delete_cold(tenant, cold_root)?;
        }
    }
    Ok(Body::TransferTenantResponse(answer))
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::ExportFiles(_) => "export_files",
        Step::ReadFile(_) => "read_file",
        Step::ImportBegin(_) => "import_begin",
        Step::ImportPiece(_) => "import_piece",
        Step::ImportCommit(_) => "import_commit",
        Step::ImportReuse(_) => "import_reuse",
        Step::ImportStaged(_) => "import_staged",
        Step::ImportAbort(_) => "import_abort",
        Step::DropFiles(_) => "drop_files",
    }
}

impl Worker {
    /// Starts one transfer step, or says why not.
    pub(super) fn transfer(
        &mut self,
        s: &mut Session,
        request_id: u64,
        transfer: cluster::TransferTenant,
    ) -> Option<Error> {
        if self.is_stopping() {
            return Some(Error::ShuttingDown);
        }
        let tenant = match TenantId::parse(&transfer.tenant) {
            Ok(tenant) => tenant,
            Err(err) => return Some(err.into()),
        };
        let Some(step) = transfer.step else {
            return Some(Error::InvalidArgument("the transfer has no step".into()));
        };
        // A replica's catch-up reads from a copy that stays assigned and serving: the
        // coordinator holds the tenant's writes back and compares a second listing (see
        // `Engine::export_files_live`). Nothing that writes runs on an assigned tenant.
        let reads_live = match &step {
            Step::ExportFiles(export) => export.live,
            Step::ReadFile(_) => true,
            _ => false,
        };
        if !reads_live && s.assignments.contains_key(&tenant) {
            return Some(Error::InvalidArgument(format!(
                "tenant {tenant} is assigned to this worker; its files are copied only once it is released"
            )));
        }
        let name = step_name(&step);
        if matches!(step, Step::ReadFile(_) | Step::ImportPiece(_)) {
            tracing::debug!(tenant = %tenant, request_id, step = name, "tenant transfer step");
        } else {
            tracing::info!(tenant = %tenant, request_id, step = name, "tenant transfer step");
        }
        let engine = self.engine.clone();
        let copied = tenant.clone();
        let cold_root = self.config.cold_dir.clone();
        let hook = self.config.request_hook.clone();
        self.spawn_exclusive(request_id, &tenant, "the transfer step", move || {
            if let Some(hook) = &hook {
                hook(copied.as_str(), name);
            }
            let result = run(&engine, &copied, step, &cold_root);
            if let Err(err) = &result {
                tracing::warn!(request_id, step = name, error = %err, "tenant transfer step refused");
            }
            result
        });
        None
    }
}
