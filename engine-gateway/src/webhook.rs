//! Webhooks on run end: each ended run's record is POSTed to one URL, signed as the Standard
//! Webhooks specification says, at least once.
//!
//! The store enqueues a delivery in the transaction that records a run's end (also for a run a
//! sweep marks `interrupted`), so a crash can lose none; any node's dispatcher claims due
//! deliveries for a lease, POSTs them, and settles each: removed when delivered, due again
//! after a backoff with jitter when the receiver failed, removed with an error log and the
//! `given_up` metric once it has been failing for [`WebhookConfig::give_up_after`].
//!
//! What the receiver's answer means: `2xx` delivered; `410 Gone` the receiver wants no more of
//! this delivery (removed, never retried; the `gone` metric); any other status, a timeout or a
//! connection error is a failure (retried). A delivery can arrive twice (a node that dies
//! after the POST and before settling it): receivers deduplicate on `webhook-id`, which is the
//! same for every attempt of one run's delivery.

use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine as _;
use engine_factory::{RunStore, WebhookDue};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::api::RunView;
use crate::metrics::ResultLabel;
use crate::server::Inner;
use crate::Gateway;

/// Why a [`WebhookConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookConfigError {
    /// The URL is not an absolute `http` or `https` URL.
    #[error("the webhook URL `{url}` is not an absolute http:// or https:// URL")]
    BadUrl {
        /// The URL as given.
        url: String,
    },
    /// The secret is not `whsec_` followed by base64 of 24 to 64 bytes.
    #[error("the webhook secret must be `whsec_` followed by the base64 of 24 to 64 random bytes (e.g. `whsec_$(openssl rand -base64 32)`): {reason}")]
    BadSecret {
        /// What is wrong with it.
        reason: String,
    },
}

/// Where and how the gateway POSTs ended runs.
///
/// ```
/// use std::time::Duration;
/// use engine_gateway::WebhookConfig;
/// let config = WebhookConfig::new(
///     "https://hooks.example.com/runs",
///     "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
/// )?
/// .with_give_up_after(Duration::from_secs(3_600));
/// assert!(!format!("{config:?}").contains("MfKQ9r8"), "Debug hides the secret");
/// # Ok::<(), engine_gateway::WebhookConfigError>(())
/// ```
#[derive(Clone)]
pub struct WebhookConfig {
    url: reqwest::Url,
    key: Vec<u8>,
    timeout: Duration,
    retry_base: Duration,
    retry_max: Duration,
    give_up_after: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url_redacted())
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("give_up_after", &self.give_up_after)
            .finish()
    }
}

impl WebhookConfig {
    /// Deliveries to `url`, signed with `secret` (`whsec_` and the base64 of 24 to 64 bytes,
    /// the Standard Webhooks format). Each attempt times out after 10 s; a failed delivery is
    /// retried after 1 s, doubling up to 10 minutes (each with up to 20% jitter), and given up
    /// after 24 hours.
    ///
    /// # Errors
    /// [`WebhookConfigError`] for a URL that is not absolute http(s) or a malformed secret.
    pub fn new(url: &str, secret: &str) -> Result<Self, WebhookConfigError> {
        let parsed = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| WebhookConfigError::BadUrl {
                url: url.to_owned(),
            })?;
        let encoded =
            secret
                .strip_prefix("whsec_")
                .ok_or_else(|| WebhookConfigError::BadSecret {
                    reason: "it does not start with `whsec_`".to_owned(),
                })?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| WebhookConfigError::BadSecret {
                reason: format!("not base64 ({e})"),
            })?;
        if !(24..=64).contains(&key.len()) {
            return Err(WebhookConfigError::BadSecret {
                reason: format!("it decodes to {} bytes", key.len()),
            });
        }
        Ok(Self {
            url: parsed,
            key,
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(600),
            give_up_after: Duration::from_secs(24 * 3600),
        })
    }

    /// Longest one attempt may take, headers and all (default 10 s): a receiver slower than
    /// this has failed the attempt.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(10));
        self
    }

    /// The first retry's delay (default 1 s), doubling per attempt up to `max` (default 10
    /// minutes), each with up to 20% jitter.
    #[must_use]
    pub fn with_retry(mut self, base: Duration, max: Duration) -> Self {
        self.retry_base = base.max(Duration::from_millis(1));
        self.retry_max = max.max(self.retry_base);
        self
    }

    /// How long after a run's end its delivery is retried before it is given up (default 24
    /// hours): an error log line and the `given_up` metric.
    #[must_use]
    pub fn with_give_up_after(mut self, after: Duration) -> Self {
        self.give_up_after = after;
        self
    }

    /// The URL deliveries go to.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The URL without what may be a credential (user, password, query): for logs.
    pub fn url_redacted(&self) -> String {
        let mut url = self.url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if url.query().is_some() {
            url.set_query(Some("***"));
        }
        url.into()
    }

    /// How long a delivery is retried.
    pub fn give_up_after(&self) -> Duration {
        self.give_up_after
    }

    /// The delay before retrying a delivery that failed its `attempts`th attempt.
    fn backoff(&self, attempts: u32) -> Duration {
        let doubled = self
            .retry_base
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let base = doubled.min(self.retry_max);
        base.mul_f64(1.0 + fastrand::f64() * 0.2)
    }
}

/// The `webhook-id`, `webhook-timestamp` and `webhook-signature` headers of one delivery of
/// `body`, as the Standard Webhooks specification defines them: the signature is
/// `v1,` and the base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}` with the secret's key.
pub(crate) fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| {
        // HMAC takes keys of any length; this cannot fail.
        unreachable!("HMAC accepts any key length")
    });
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let signature = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(signature)
    )
}

/// The delivery id of `user`'s run `run`: the same for every attempt (receivers deduplicate on
/// it), distinct across users even for equal run ids.
fn delivery_id(due: &WebhookDue) -> String {
    let mut h = Sha256::new();
    h.update(due.user_id.as_str().as_bytes());
    h.update([0]);
    h.update(due.run_id.as_str().as_bytes());
    format!("msg_{}", hex::encode(&h.finalize()[..16]))
}

/// The body of one delivery.
#[derive(serde::Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    user_id: &'a str,
    run: RunView,
}

/// How one attempt went.
enum Attempt {
    Delivered,
    Gone,
    Failed(String),
}

/// The dispatcher's shared state: the config, the HTTP client, the wake-up, its task.
pub(crate) struct Webhooks {
    config: WebhookConfig,
    client: reqwest::Client,
    wake: Notify,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Deliveries claimed per round.
const CLAIM: usize = 32;
/// Longest the dispatcher sleeps between looks at the store (deliveries enqueued by another
/// node, retries coming due).
const POLL: Duration = Duration::from_millis(500);

impl Webhooks {
    pub(crate) fn new(config: WebhookConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            config,
            client,
            wake: Notify::new(),
            task: std::sync::Mutex::new(None),
        })
    }

    async fn attempt(&self, due: &WebhookDue, record: &engine_factory::RunRecord) -> Attempt {
        let payload = Payload {
            kind: "run.ended",
            user_id: due.user_id.as_str(),
            run: RunView::from_record(record),
        };
        let body = match serde_json::to_vec(&payload) {
            Ok(b) => b,
            Err(e) => return Attempt::Failed(format!("cannot encode the payload: {e}")),
        };
        let id = delivery_id(due);
        let timestamp = engine_factory::now_us() / 1_000_000;
        let signature = sign(&self.config.key, &id, timestamp, &body);
        let sent = self
            .client
            .post(self.config.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Attempt::Delivered,
            Ok(r) if r.status() == reqwest::StatusCode::GONE => Attempt::Gone,
            Ok(r) => Attempt::Failed(format!("the receiver answered {}", r.status())),
            Err(e) if e.is_timeout() => {
                Attempt::Failed(format!("no answer within {:?}", self.config.timeout))
            }
            Err(e) => Attempt::Failed(format!("cannot reach the receiver: {e}")),
        }
    }
}

impl Gateway {
    /// Wakes the webhook dispatcher (a run of this node ended).
    pub(crate) fn run_ended(&self) {
        if let Some(w) = &self.inner.webhooks {
            w.wake.notify_one();
        }
    }

    /// Starts the dispatcher: it runs until the gateway is dropped or shut down.
    pub(crate) fn start_webhooks(&self) {
        if let Some(hooks) = &self.inner.webhooks {
            let task = tokio::spawn(dispatch(Arc::downgrade(&self.inner), Arc::clone(hooks)));
            *crate::session::lock(&hooks.task) = Some(task);
        }
    }

    /// Stops the dispatcher (the gateway is shutting down): the round under way finishes and
    /// settles its deliveries, within the attempt timeout and a second.
    pub(crate) async fn stop_webhooks(&self) {
        let Some(hooks) = &self.inner.webhooks else {
            return;
        };
        hooks.wake.notify_one();
        let task = crate::session::lock(&hooks.task).take();
        if let Some(mut task) = task {
            let limit = hooks.config.timeout + Duration::from_secs(1);
            if tokio::time::timeout(limit, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(
                    "webhook attempts still under way at shutdown: due again after their lease"
                );
            }
        }
    }
}

/// Claims due deliveries and attempts them, round after round; between rounds it waits for a
/// run's end on this node or [`POLL`], holding no reference to the gateway.
async fn dispatch(weak: Weak<Inner>, hooks: Arc<Webhooks>) {
    let mut failures: u32 = 0;
    loop {
        let pause = {
            let Some(inner) = weak.upgrade() else { return };
            if inner
                .shutting_down
                .load(std::sync::atomic::Ordering::Acquire)
            {
                return;
            }
            let Some(store) = inner.factory.run_store().cloned() else {
                return;
            };
            let lease = hooks.config.timeout + Duration::from_secs(30);
            match store.claim_webhooks(CLAIM, lease).await {
                Ok(due) if due.is_empty() => {
                    failures = 0;
                    Some(POLL)
                }
                Ok(due) => {
                    failures = 0;
                    let attempts = due.iter().map(|d| deliver(&inner, &hooks, &*store, d));
                    futures_util::future::join_all(attempts).await;
                    None // more may be due
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "webhooks: the run store cannot be read; retrying");
                    Some(Duration::from_millis(500).saturating_mul(failures.min(20)))
                }
            }
        };
        if let Some(pause) = pause {
            tokio::select! {
                () = hooks.wake.notified() => {},
                () = tokio::time::sleep(pause) => {},
            }
        }
    }
}

/// One attempt of `due`, settled in the store.
async fn deliver(inner: &Inner, hooks: &Webhooks, store: &dyn RunStore, due: &WebhookDue) {
    let (user, run) = (&due.user_id, &due.run_id);
    let span =
        tracing::info_span!("webhook", user_id = %user, run_id = %run, attempt = due.attempts);
    async {
        let (retry_in, result) = match &due.run {
            // The run's thread was deleted since its end: nothing of it is sent.
            None => {
                tracing::info!("webhook delivery dropped: its run was deleted");
                (None, "run_deleted")
            }
            Some(record) => judge(hooks, due, hooks.attempt(due, record).await),
        };
        inner
            .metrics
            .webhooks
            .get_or_create(&ResultLabel { result })
            .inc();
        if let Err(e) = store.settle_webhook(user, run, retry_in).await {
            // The claim's lease runs out and the delivery is due again: at least once.
            tracing::warn!(error = %e, "webhook delivery not settled; it is due again after its lease");
        }
    }
    .instrument(span)
    .await;
}

/// What to do after an attempt: remove the delivery (`None`) or retry it after a delay, and
/// the metric's result.
fn judge(hooks: &Webhooks, due: &WebhookDue, attempt: Attempt) -> (Option<Duration>, &'static str) {
    match attempt {
        Attempt::Delivered => (None, "delivered"),
        Attempt::Gone => {
            tracing::warn!("webhook receiver answered 410 Gone: this delivery is dropped");
            (None, "gone")
        }
        Attempt::Failed(why) => {
            let now = engine_factory::now_us();
            let age = Duration::from_micros(now.saturating_sub(due.enqueued_at_us));
            if age >= hooks.config.give_up_after {
                tracing::error!(
                    attempts = due.attempts,
                    reason = %why,
                    "webhook delivery given up: failing for longer than {:?}",
                    hooks.config.give_up_after
                );
                (None, "given_up")
            } else {
                let delay = hooks.config.backoff(due.attempts);
                tracing::warn!(reason = %why, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "webhook delivery failed; retrying");
                (Some(delay), "failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (its README's test vector).
    #[test]
    fn signatures_match_the_specifications_test_vector() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn bad_urls_and_secrets_are_refused_naming_the_fix() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert!(WebhookConfig::new("ftp://x/y", secret).is_err());
        assert!(WebhookConfig::new("/relative", secret).is_err());
        let e = WebhookConfig::new("http://127.0.0.1:9/", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap_err();
        assert!(e.to_string().contains("whsec_"), "{e}");
        let e = WebhookConfig::new("http://127.0.0.1:9/", "whsec_c2hvcnQ=").unwrap_err();
        assert!(e.to_string().contains("5 bytes"), "{e}");
        assert!(WebhookConfig::new("http://127.0.0.1:9/", secret).is_ok());
    }

    #[test]
    fn retries_back_off_to_a_cap_with_jitter() {
        let c = WebhookConfig::new(
            "http://127.0.0.1:9/",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .unwrap()
        .with_retry(Duration::from_millis(100), Duration::from_secs(1));
        let first = c.backoff(1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(120));
        let third = c.backoff(3);
        assert!(third >= Duration::from_millis(400) && third <= Duration::from_millis(480));
        for attempts in 5..40 {
            let d = c.backoff(attempts);
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_millis(1_200));
        }
    }
}
