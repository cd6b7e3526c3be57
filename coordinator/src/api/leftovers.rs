//! Deleting the files of copies that went (`store::leftovers`): at once when the copy's worker is
//! connected, otherwise at its next hello. The check that the worker holds no copy of the tenant
//! and the deletion run under the tenant's write lock, which every change of its copies takes,
//! so a copy added to that worker meanwhile is never deleted.

use proto::vaultvec::cluster::v1 as cluster;

use super::{Service, off_runtime};

use cluster::transfer_tenant::Step;

impl Service {
    /// Has `worker` delete its leftover copy of `tenant` if it is connected, and ends the
    /// record; a worker that is not connected, or does not answer, deletes it at its next hello.
    /// Answers whether the record ended.
    pub(crate) async fn drop_leftover(&self, tenant: &str, worker: &str) -> bool {
        if self.hub.worker(worker).is_none() {
            return false;
        }
        let turn = match self.write_turn(tenant).await {
            Ok(turn) => turn,
            Err(err) => {
                tracing::warn!(tenant, worker, error = %err, "deleting a leftover copy waits for the worker's next hello");
                return false;
            }
        };
        let holds = off_runtime(|| self.store.holds_copy(tenant, worker));
        match holds {
            Ok(false) if !self.moving.contains(tenant) => {}
            Ok(_) => {
                // The worker holds a copy again: its files are that copy's.
                return self.end_leftover(tenant, worker);
            }
            Err(err) => {
                tracing::error!(tenant, worker, error = %err, "reading a tenant's copies failed");
                return false;
            }
        }
        // An assigned tenant is released (sealed and unloaded) first: a worker deletes no files
        // of a tenant it serves.
        let epoch = off_runtime(|| self.store.placement(tenant))
            .ok()
            .flatten()
            .map_or(0, |p| p.epoch);
        if let Err(err) = self
            .hub
            .release_checked(worker, tenant, epoch, self.request_timeout)
            .await
        {
            tracing::warn!(tenant, worker, error = %err, "releasing a leftover copy failed; tried again at the worker's next hello");
            return false;
        }
        let dropped = self
            .transfer(worker, tenant, Step::DropFiles(cluster::DropFiles {}))
            .await;
        drop(turn);
        match dropped {
            Ok(_) => {
                tracing::info!(tenant, worker, "a leftover copy was deleted");
                self.end_leftover(tenant, worker)
            }
            Err(err) => {
                tracing::warn!(tenant, worker, error = %err, "deleting a leftover copy failed; tried again at the worker's next hello");
                false
            }
        }
    }

    fn end_leftover(&self, tenant: &str, worker: &str) -> bool {
        let ended = off_runtime(|| self.store.end_leftover(tenant, worker));
        self.replication.repaired.notify_waiters();
        match ended {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(tenant, worker, error = %err, "ending a leftover copy's record failed");
                false
            }
        }
    }

    /// Deletes every leftover copy recorded on `worker` (run at its hello).
    pub(crate) async fn drop_leftovers_on(&self, worker: &str) {
        let leftovers = match off_runtime(|| self.store.leftovers_on(worker)) {
            Ok(leftovers) => leftovers,
            Err(err) => {
                tracing::error!(worker, error = %err, "reading leftover copies failed");
                return;
            }
        };
        for leftover in leftovers {
            self.drop_leftover(&leftover.tenant, worker).await;
        }
    }

    /// Waits until no leftover copy is recorded on `worker` (tests; no sleeping).
    pub async fn wait_for_no_leftovers_on(&self, worker: &str) {
        loop {
            let notified = self.replication.repaired.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.store.leftovers_on(worker).is_ok_and(|l| l.is_empty()) {
                return;
            }
            notified.await;
        }
    }
}
