//! The `send_mail` job (see the parent module).

use crate::api::{Service, off_runtime};

/// The outbox's delivery.
pub const SEND_MAIL: &str = "send_mail";

/// Sent mail is kept this long (the admin API lists it), then deleted.
const KEEP_SENT_MS: u64 = 30 * 86_400_000;

impl Service {
    /// The `send_mail` job: sends the due mails. Answers its outcome and what it did.
    pub(crate) async fn deliver_mail(&self) -> (&'static str, serde_json::Value) {
        let now = self.clock().now_ms();
        let due = match off_runtime(|| self.store.due_mail(now, super::BATCH)) {
            Ok(due) => due,
            Err(err) => {
                return (
                    "error",
                    serde_json::json!({ "error": format!("reading the outbox failed: {err}") }),
                );
            }
        };
        let Some(mailer) = self.mailer.clone() else {
            self.count_waiting_mail();
            let outcome = if due.is_empty() { "ok" } else { "error" };
            return (
                outcome,
                serde_json::json!({ "due": due.len(), "error": "no [mail] relay is configured; the mail waits" }),
            );
        };
        let (mut sent, mut failed) = (0, Vec::new());
        for mail in &due {
            let result = mailer
                .send(&mail.recipient, &mail.subject, &mail.body)
                .await;
            let at = self.clock().now_ms();
            let attempts = mail.attempts + 1;
            let recorded = match &result {
                Ok(()) => {
                    sent += 1;
                    self.metrics.mail_sent.inc();
                    off_runtime(|| self.store.mail_attempted(mail.id, at, Ok(())))
                }
                Err(error) => {
                    let next = at.saturating_add(
                        u64::try_from(super::retry_delay(attempts).as_millis()).unwrap_or(u64::MAX),
                    );
                    self.metrics.mail_failed.inc();
                    tracing::warn!(mail = mail.id, attempts, error = %error, "sending a mail failed; tried again later");
                    failed.push(serde_json::json!({ "id": mail.id, "error": error }));
                    off_runtime(|| self.store.mail_attempted(mail.id, at, Err((error, next))))
                }
            };
            if let Err(err) = recorded {
                // Sent but not marked: it may go twice, never zero times.
                tracing::error!(mail = mail.id, error = %err, "recording a mail attempt failed");
            }
        }
        self.count_waiting_mail();
        if let Err(err) =
            off_runtime(|| self.store.prune_sent_mail(now.saturating_sub(KEEP_SENT_MS)))
        {
            tracing::warn!(error = %err, "pruning sent mail failed");
        }
        let outcome = if failed.is_empty() { "ok" } else { "error" };
        (
            outcome,
            serde_json::json!({ "due": due.len(), "sent": sent, "failed": failed }),
        )
    }

    /// Sets `vaultvec_mail_waiting` to the mails not sent yet, and
    /// `vaultvec_mail_oldest_waiting_seconds` to how long the oldest of them has waited (0 when
    /// none does): a relay that refuses mail shows as an age that keeps growing.
    fn count_waiting_mail(&self) {
        match off_runtime(|| self.store.unsent_mail()) {
            Ok((waiting, oldest)) => {
                self.metrics
                    .mail_waiting
                    .set(i64::try_from(waiting).unwrap_or(i64::MAX));
                let age_s = oldest.map_or(0, |t| self.clock().now_ms().saturating_sub(t) / 1000);
                self.metrics
                    .mail_oldest_waiting_seconds
                    .set(i64::try_from(age_s).unwrap_or(i64::MAX));
            }
            Err(err) => {
                tracing::warn!(error = %err, "counting unsent mail failed");
            }
        }
    }
}
