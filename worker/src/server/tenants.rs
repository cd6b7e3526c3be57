//! The worker's tenant messages: assignment, release, and admission of tenant requests.

use super::*;

impl Worker {
    pub(super) async fn assign(
        &mut self,
        s: &mut Session,
        request_id: u64,
        assign: cluster::AssignTenant,
    ) -> Result<Option<Error>, tungstenite::Error> {
        let tenant = match TenantId::parse(&assign.tenant) {
            Ok(tenant) => tenant,
            Err(err) => return Ok(Some(err.into())),
        };
        let quota = assign.quota.unwrap_or_default();
        if let Some(&fence) = s.released.get(&tenant)
            && assign.epoch < fence
        {
            tracing::warn!(tenant = %tenant, request_id, epoch = assign.epoch, released = fence, "refusing an assignment older than the tenant's release");
            return Ok(Some(Error::StaleEpoch {
                tenant: tenant.to_string(),
                current: fence,
                got: assign.epoch,
            }));
        }
        match s.assignments.get_mut(&tenant) {
            Some(current) if assign.epoch < current.epoch => {
                tracing::warn!(tenant = %tenant, request_id, epoch = assign.epoch, current = current.epoch, "refusing an assignment with a stale epoch");
                return Ok(Some(Error::StaleEpoch {
                    tenant: tenant.to_string(),
                    current: current.epoch,
                    got: assign.epoch,
                }));
            }
            Some(current) => {
                current.epoch = assign.epoch;
                current.quota = quota;
            }
            None => {
                s.assignments.insert(
                    tenant.clone(),
                    Assignment {
                        epoch: assign.epoch,
                        quota,
                    },
                );
            }
        }
        tracing::info!(tenant = %tenant, request_id, epoch = assign.epoch, max_points = quota.max_points, max_collections = quota.max_collections, "tenant assigned");
        s.ws.send(frame(request_id, Body::Ack(cluster::Ack::default())))
            .await?;
        Ok(None)
    }

    pub(super) fn release(
        &mut self,
        s: &mut Session,
        request_id: u64,
        release: cluster::ReleaseTenant,
    ) -> Option<Error> {
        let tenant = match TenantId::parse(&release.tenant) {
            Ok(tenant) => tenant,
            Err(err) => return Some(err.into()),
        };
        if let Some(current) = s.assignments.get(&tenant)
            && release.epoch < current.epoch
        {
            tracing::warn!(tenant = %tenant, request_id, epoch = release.epoch, current = current.epoch, "refusing a release with a stale epoch");
            return Some(Error::StaleEpoch {
                tenant: tenant.to_string(),
                current: current.epoch,
                got: release.epoch,
            });
        }
        s.assignments.remove(&tenant);
        let fence = s.released.entry(tenant.clone()).or_insert(0);
        *fence = (*fence).max(release.epoch);
        tracing::info!(tenant = %tenant, request_id, epoch = release.epoch, "tenant released");
        let engine = self.engine.clone();
        let unloaded = tenant.clone();
        // Waits for the tenant's requests in flight; unloading zeroizes its plaintext.
        self.spawn_exclusive(request_id, &tenant, "unloading", move || {
            engine.unload_tenant(&unloaded)?;
            Ok(Body::Ack(cluster::Ack::default()))
        });
        None
    }

    /// Runs `work` on a blocking thread under `tenant`'s gate, held exclusively (after the
    /// tenant's requests in flight), and answers `request_id` with its result.
    pub(super) fn spawn_exclusive(
        &mut self,
        request_id: u64,
        tenant: &TenantId,
        what: &'static str,
        work: impl FnOnce() -> Result<Body, Error> + Send + 'static,
    ) {
        let slot = self.tenants.slot(tenant);
        let generation = self.generation;
        self.jobs.spawn(
            async move {
                let res = tokio::task::spawn_blocking(move || {
                    let _exclusive = slot.gate.write();
                    work()
                })
                .await;
                let result = match res {
                    Ok(result) => result,
                    Err(err) => Err(Error::Internal(format!("{what} failed: {err}"))),
                };
                Done::Reply {
                    generation,
                    request_id,
                    deadline_unix_ms: 0,
                    counted_for: None,
                    frames: answer_frames(request_id, result),
                }
            }
            .in_current_span(),
        );
    }

    /// Checks a tenant request and starts it, or says why not.
    pub(super) fn admit(
        &mut self,
        s: &mut Session,
        request_id: u64,
        deadline_unix_ms: u64,
        tenant_name: String,
        epoch: u64,
        op: OpSource,
    ) -> Option<Error> {
        if self.is_stopping() {
            return Some(Error::ShuttingDown);
        }
        if deadline_unix_ms != 0 && now_ms() >= deadline_unix_ms {
            tracing::debug!(tenant = %tenant_name, request_id, "refusing a request past its deadline");
            return Some(Error::DeadlineExceeded);
        }
        let assignment = TenantId::parse(&tenant_name)
            .ok()
            .and_then(|tenant| s.assignments.get(&tenant).map(|a| (tenant, *a)));
        let Some((tenant, assignment)) = assignment else {
            tracing::warn!(tenant = %tenant_name, request_id, "refusing a request for a tenant not assigned here");
            return Some(Error::NotAssigned(tenant_name));
        };
        if epoch != assignment.epoch {
            tracing::warn!(tenant = %tenant, request_id, epoch = epoch, current = assignment.epoch, "refusing a request with a stale epoch");
            return Some(Error::StaleEpoch {
                tenant: tenant_name,
                current: assignment.epoch,
                got: epoch,
            });
        }
        let operation = match op {
            OpSource::Decoded(Some(operation), token) => Ok((operation, token)),
            OpSource::Decoded(None, _) => {
                return Some(Error::InvalidArgument(
                    "the request has no operation".into(),
                ));
            }
            OpSource::Frame(bytes) => Err(bytes),
        };
        // The applied write token is read only while nothing else of the tenant runs: a write
        // admitted before it (an earlier attempt the coordinator lost track of) has finished, and
        // frames come in order, so none admitted after it is that attempt. The coordinator
        // retries while the tenant is busy.
        if let Ok((cluster::tenant_request::Op::AppliedToken(_), _)) = &operation {
            let running = self.tenant_in_flight.get(&tenant).copied().unwrap_or(0);
            if running > 0 {
                return Some(Error::TenantBusy {
                    held: running,
                    share: 0,
                });
            }
        }
        if self.in_flight >= self.config.max_in_flight {
            tracing::debug!(tenant = %tenant, request_id, in_flight = self.in_flight, "busy");
            return Some(Error::Busy(self.in_flight));
        }
        let held = self.tenant_in_flight.get(&tenant).copied().unwrap_or(0);
        let share = self.tenant_share(&tenant);
        if held >= share {
            tracing::debug!(tenant = %tenant, request_id, held, share, "the tenant holds its share of the worker");
            return Some(Error::TenantBusy { held, share });
        }
        *self.tenant_in_flight.entry(tenant.clone()).or_default() += 1;
        self.in_flight += 1;
        let span = tracing::info_span!(
            "request",
            tenant = %tenant,
            request_id,
            op = operation.as_ref().map_or("", |(operation, _)| op::name(operation)),
            collection = tracing::field::Empty,
        );
        let slot = self.tenants.touch(&tenant);
        let engine = self.engine.clone();
        let generation = self.generation;
        let quota = assignment.quota;
        let config = self.config.clone();
        let counted_for = tenant.clone();
        let running = self
            .tenant_running
            .entry(counted_for.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(
                    self.config.max_running_per_tenant.max(1) as usize,
                ))
            })
            .clone();
        let lost_for = counted_for.clone();
        let shares = self.shares.clone();
        let run_as = tenant.clone();
        // Every request, however cheap it looks, runs on a blocking thread: a search the loop ran
        // itself (huge ef, a misjudged filter) would stop heartbeats, key-service answers and
        // every other tenant's frames (INV-24). A tenant runs at most `max_running_per_tenant`
        // requests at once (about one per core); the rest wait their turn on its semaphore, so a
        // tenant with 32 heavy searches queued competes for the CPU with 2 threads, not 32, and
        // another tenant's request starts at once on a thread of its own. Those threads run at
        // background priority while the tenant has another request running or has used more than
        // its share of the CPU lately (`share`), so a light tenant's request comes first.
        let job = move || {
            let _entered = span.enter();
            let started = std::time::Instant::now();
            let operation = match operation {
                Ok(operation) => Ok(operation),
                Err(frame) => {
                    if let Some(hook) = &config.request_hook {
                        hook(tenant.as_str(), "decode");
                    }
                    super::frames::decode_request_op(&frame).inspect(|(operation, _)| {
                        span.record("op", op::name(operation));
                    })
                }
            };
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let (operation, token) = operation?;
                let ctx = op::Ctx {
                    engine: &engine,
                    slot: &slot,
                    tenant: &tenant,
                    quota,
                    deadline_unix_ms,
                    deadline: op::storage_deadline(deadline_unix_ms),
                    hook: config.request_hook.as_ref(),
                    write_token: (token != 0).then_some(token),
                    cold_dir: &config.cold_dir,
                };
                op::run(&ctx, operation)
            }));
            let result = match res {
                Ok(Ok(answer)) => Ok(Body::TenantResponse(cluster::TenantResponse {
                    result: Some(answer),
                })),
                Ok(Err(err)) => Err(err),
                Err(_) => Err(Error::Internal("the request panicked".into())),
            };
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                ok = result.is_ok(),
                "request done"
            );
            Done::Reply {
                generation,
                request_id,
                deadline_unix_ms,
                counted_for: Some(counted_for),
                frames: answer_frames(request_id, result),
            }
        };
        self.jobs.spawn(async move {
            // The semaphore is never closed; without a permit the request still runs.
            let _permit = running.acquire_owned().await.ok();
            match shares.run(run_as, job).await {
                Ok(done) => done,
                Err(share::Lost) => {
                    tracing::error!("a tenant request's thread failed");
                    Done::Reply {
                        generation,
                        request_id,
                        deadline_unix_ms,
                        counted_for: Some(lost_for),
                        frames: answer_frames(
                            request_id,
                            Err(Error::Internal("the request's task was lost".into())),
                        ),
                    }
                }
            }
        });
        None
    }
}

/// Where a request's operation comes from.
pub(super) enum OpSource {
    /// Decoded with its envelope on the loop (small frames), with its write token (0: none).
    Decoded(Option<cluster::tenant_request::Op>, u64),
    /// Still in its frame, to be decoded on the request's thread (`LARGE_FRAME_BYTES`).
    Frame(tokio_tungstenite::tungstenite::Bytes),
}
