//! The per-request [`UserExecutionContext`] and its builder.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::ContextError;
use crate::ids::{validate, RequestId, RunId, ThreadId, UserId};
use crate::limits::{MAX_OPERATION_DEPTH, RESERVED_METADATA_KEYS};

/// Who asked for a run, in which thread, for which run and request.
///
/// Immutable after construction and cheap to clone (one `Arc`). Every id in it has been
/// validated, so a placeholder or empty id cannot reach an engine.
///
/// ```
/// use engine_core::UserExecutionContext;
///
/// let ctx = UserExecutionContext::builder()
///     .user_id("alice")
///     .thread_id("thread-1")
///     .run_id("run-1")
///     .agent_context("locale", "en-GB")
///     .build()?;
/// assert_eq!(ctx.user_id().as_str(), "alice");
/// let child = ctx.child("summarise")?;
/// assert_eq!(child.operation_depth(), 1);
/// assert_eq!(child.parent_request_id(), Some(ctx.request_id()));
/// # Ok::<(), engine_core::ContextError>(())
/// ```
#[derive(Clone)]
pub struct UserExecutionContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    user_id: UserId,
    thread_id: ThreadId,
    run_id: RunId,
    request_id: RequestId,
    connection_id: Option<String>,
    created_at: SystemTime,
    agent_context: BTreeMap<String, String>,
    audit_metadata: BTreeMap<String, String>,
    operation_depth: u32,
    parent_request_id: Option<RequestId>,
    operation: Option<String>,
}

impl UserExecutionContext {
    /// Starts a builder; `user_id`, `thread_id` and `run_id` are required.
    pub fn builder() -> UserExecutionContextBuilder {
        UserExecutionContextBuilder::default()
    }

    /// Shorthand for a context with just the three required ids.
    ///
    /// # Errors
    /// [`ContextError::InvalidId`] naming the first invalid field.
    pub fn new(
        user_id: impl AsRef<str>,
        thread_id: impl AsRef<str>,
        run_id: impl AsRef<str>,
    ) -> Result<Self, ContextError> {
        Self::builder()
            .user_id(user_id)
            .thread_id(thread_id)
            .run_id(run_id)
            .build()
    }

    /// The user this context belongs to.
    pub fn user_id(&self) -> &UserId {
        &self.inner.user_id
    }
    /// The conversation thread.
    pub fn thread_id(&self) -> &ThreadId {
        &self.inner.thread_id
    }
    /// The run.
    pub fn run_id(&self) -> &RunId {
        &self.inner.run_id
    }
    /// The request (generated when the builder was given none).
    pub fn request_id(&self) -> &RequestId {
        &self.inner.request_id
    }
    /// The client connection (for example a WebSocket id), if any.
    pub fn connection_id(&self) -> Option<&str> {
        self.inner.connection_id.as_deref()
    }
    /// When the context was built.
    pub fn created_at(&self) -> SystemTime {
        self.inner.created_at
    }
    /// Free-form string metadata for agents.
    pub fn agent_context(&self) -> &BTreeMap<String, String> {
        &self.inner.agent_context
    }
    /// Free-form string metadata for audit logs.
    pub fn audit_metadata(&self) -> &BTreeMap<String, String> {
        &self.inner.audit_metadata
    }
    /// 0 for a root context, parent depth + 1 for a child.
    pub fn operation_depth(&self) -> u32 {
        self.inner.operation_depth
    }
    /// The request id of the parent context, for a child.
    pub fn parent_request_id(&self) -> Option<&RequestId> {
        self.inner.parent_request_id.as_ref()
    }
    /// The operation name a child was created for.
    pub fn operation(&self) -> Option<&str> {
        self.inner.operation.as_deref()
    }

    /// A child context for a sub-operation: same user, thread, run and connection, a new request
    /// id, depth + 1 and this context's request id as parent.
    ///
    /// # Errors
    /// [`ContextError::MaxDepthExceeded`] when the child would reach [`MAX_OPERATION_DEPTH`].
    pub fn child(&self, operation: impl Into<String>) -> Result<Self, ContextError> {
        let operation = operation.into();
        let depth = self.inner.operation_depth + 1;
        if depth >= MAX_OPERATION_DEPTH {
            return Err(ContextError::MaxDepthExceeded {
                max: MAX_OPERATION_DEPTH,
                operation,
            });
        }
        Ok(self.derive(
            self.inner.run_id.clone(),
            depth,
            Some(self.inner.request_id.clone()),
            Some(operation),
        ))
    }

    /// A context for the next message of the same conversation: same user, thread, connection
    /// and metadata, a freshly generated run id and request id, depth 0.
    pub fn new_run(&self) -> Self {
        self.derive(RunId::generate(), 0, None, None)
    }

    /// Like [`new_run`](Self::new_run) with a caller-chosen run id.
    pub fn with_run_id(&self, run_id: RunId) -> Self {
        self.derive(run_id, 0, None, None)
    }

    fn derive(
        &self,
        run_id: RunId,
        operation_depth: u32,
        parent_request_id: Option<RequestId>,
        operation: Option<String>,
    ) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(ContextInner {
                user_id: i.user_id.clone(),
                thread_id: i.thread_id.clone(),
                run_id,
                request_id: RequestId::generate(),
                connection_id: i.connection_id.clone(),
                created_at: SystemTime::now(),
                agent_context: i.agent_context.clone(),
                audit_metadata: i.audit_metadata.clone(),
                operation_depth,
                parent_request_id,
                operation,
            }),
        }
    }
}

impl std::fmt::Debug for UserExecutionContext {
    /// Prints ids and depth only; metadata values may be sensitive and are not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserExecutionContext")
            .field("user_id", &self.inner.user_id)
            .field("thread_id", &self.inner.thread_id)
            .field("run_id", &self.inner.run_id)
            .field("request_id", &self.inner.request_id)
            .field("operation_depth", &self.inner.operation_depth)
            .finish_non_exhaustive()
    }
}

/// Builds a [`UserExecutionContext`]; all validation happens in [`build`](Self::build).
#[derive(Debug, Default, Clone)]
#[must_use = "a builder does nothing until build() is called"]
#[doc(alias("UserExecutionContextFactory", "UserContextFactory"))]
pub struct UserExecutionContextBuilder {
    user_id: Option<String>,
    thread_id: Option<String>,
    run_id: Option<String>,
    request_id: Option<String>,
    connection_id: Option<String>,
    agent_context: BTreeMap<String, String>,
    audit_metadata: BTreeMap<String, String>,
}

impl UserExecutionContextBuilder {
    /// Sets the user id (required).
    pub fn user_id(mut self, v: impl AsRef<str>) -> Self {
        self.user_id = Some(v.as_ref().to_owned());
        self
    }
    /// Sets the thread id (required).
    pub fn thread_id(mut self, v: impl AsRef<str>) -> Self {
        self.thread_id = Some(v.as_ref().to_owned());
        self
    }
    /// Sets the run id (required; [`RunId::generate`] gives a fresh one).
    pub fn run_id(mut self, v: impl AsRef<str>) -> Self {
        self.run_id = Some(v.as_ref().to_owned());
        self
    }
    /// Sets the request id (generated when absent).
    pub fn request_id(mut self, v: impl AsRef<str>) -> Self {
        self.request_id = Some(v.as_ref().to_owned());
        self
    }
    /// Sets the client connection id (validated like the other ids).
    pub fn connection_id(mut self, v: impl AsRef<str>) -> Self {
        self.connection_id = Some(v.as_ref().to_owned());
        self
    }
    /// Adds one agent-context entry; reserved keys are rejected by `build`.
    pub fn agent_context(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.agent_context.insert(key.into(), value.into());
        self
    }
    /// Adds one audit-metadata entry; reserved keys are rejected by `build`.
    pub fn audit_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.audit_metadata.insert(key.into(), value.into());
        self
    }

    /// Validates every field and builds the context.
    ///
    /// # Errors
    /// [`ContextError::Missing`] for an unset required id, [`ContextError::InvalidId`] for an
    /// invalid one, [`ContextError::ReservedMetadataKey`] for a reserved metadata key.
    pub fn build(self) -> Result<UserExecutionContext, ContextError> {
        fn required<T>(
            v: Option<String>,
            field: &'static str,
            make: fn(String) -> Result<T, crate::IdError>,
        ) -> Result<T, ContextError> {
            let v = v.ok_or(ContextError::Missing { field })?;
            Ok(make(v)?)
        }
        let user_id = required(self.user_id, UserId::FIELD, UserId::try_from)?;
        let thread_id = required(self.thread_id, ThreadId::FIELD, ThreadId::try_from)?;
        let run_id = required(self.run_id, RunId::FIELD, RunId::try_from)?;
        let request_id = match self.request_id {
            Some(v) => RequestId::new(v)?,
            None => RequestId::generate(),
        };
        if let Some(c) = &self.connection_id {
            validate("connection_id", c)?;
        }
        for (map, entries) in [
            ("agent_context", &self.agent_context),
            ("audit_metadata", &self.audit_metadata),
        ] {
            if let Some(key) = entries
                .keys()
                .find(|k| RESERVED_METADATA_KEYS.contains(&k.as_str()))
            {
                return Err(ContextError::ReservedMetadataKey {
                    map,
                    key: key.clone(),
                });
            }
        }
        Ok(UserExecutionContext {
            inner: Arc::new(ContextInner {
                user_id,
                thread_id,
                run_id,
                request_id,
                connection_id: self.connection_id,
                created_at: SystemTime::now(),
                agent_context: self.agent_context,
                audit_metadata: self.audit_metadata,
                operation_depth: 0,
                parent_request_id: None,
                operation: None,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdRejection;

    fn ctx() -> UserExecutionContext {
        UserExecutionContext::new("alice", "thread-a", "run-a").unwrap()
    }

    #[test]
    fn builder_generates_request_id_and_keeps_fields() {
        let c = UserExecutionContext::builder()
            .user_id("alice")
            .thread_id("t1")
            .run_id("r1")
            .connection_id("ws-17")
            .agent_context("locale", "en")
            .audit_metadata("ip", "10.0.0.1")
            .build()
            .unwrap();
        assert!(c.request_id().as_str().starts_with("req_"));
        assert_eq!(c.connection_id(), Some("ws-17"));
        assert_eq!(c.agent_context()["locale"], "en");
        assert_eq!(c.audit_metadata()["ip"], "10.0.0.1");
        assert_eq!(c.operation_depth(), 0);
        let explicit = UserExecutionContext::builder()
            .user_id("alice")
            .thread_id("t1")
            .run_id("r1")
            .request_id("req-9")
            .build()
            .unwrap();
        assert_eq!(explicit.request_id().as_str(), "req-9");
    }

    #[test]
    fn missing_and_invalid_fields_are_named() {
        let e = UserExecutionContext::builder()
            .user_id("alice")
            .run_id("r")
            .build()
            .unwrap_err();
        assert_eq!(e, ContextError::Missing { field: "thread_id" });
        assert!(e.to_string().contains("thread_id is required"));
        let e = UserExecutionContext::new("alice", "t", "registry").unwrap_err();
        match &e {
            ContextError::InvalidId(id) => {
                assert_eq!(id.field, "run_id");
                assert_eq!(id.reason, IdRejection::Placeholder);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("run_id"), "{e}");
        let e = UserExecutionContext::builder()
            .user_id("alice")
            .thread_id("t")
            .run_id("r")
            .connection_id("")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("connection_id"), "{e}");
    }

    #[test]
    fn reserved_metadata_keys_are_rejected_in_both_maps() {
        for key in RESERVED_METADATA_KEYS {
            for audit in [false, true] {
                let b = UserExecutionContext::builder()
                    .user_id("alice")
                    .thread_id("t")
                    .run_id("r");
                let b = if audit {
                    b.audit_metadata(*key, "x")
                } else {
                    b.agent_context(*key, "x")
                };
                let e = b.build().unwrap_err();
                let map = if audit {
                    "audit_metadata"
                } else {
                    "agent_context"
                };
                assert_eq!(
                    e,
                    ContextError::ReservedMetadataKey {
                        map,
                        key: key.to_string()
                    }
                );
                assert!(e.to_string().contains(key));
            }
        }
    }

    #[test]
    fn child_increments_depth_and_refuses_depth_ten() {
        let root = ctx();
        let mut c = root.clone();
        for depth in 1..MAX_OPERATION_DEPTH {
            let next = c.child(format!("op{depth}")).unwrap();
            assert_eq!(next.operation_depth(), depth);
            assert_eq!(next.parent_request_id(), Some(c.request_id()));
            assert_ne!(next.request_id(), c.request_id());
            assert_eq!(next.user_id(), root.user_id());
            assert_eq!(next.run_id(), root.run_id());
            assert_eq!(next.operation(), Some(format!("op{depth}").as_str()));
            c = next;
        }
        assert_eq!(c.operation_depth(), 9);
        let e = c.child("too-deep").unwrap_err();
        assert_eq!(
            e,
            ContextError::MaxDepthExceeded {
                max: 10,
                operation: "too-deep".into()
            }
        );
        assert!(e.to_string().contains("at most 10"));
    }

    #[test]
    fn new_run_keeps_user_and_thread_but_not_run() {
        let a = ctx();
        let b = a.new_run();
        assert_eq!(a.user_id(), b.user_id());
        assert_eq!(a.thread_id(), b.thread_id());
        assert_ne!(a.run_id(), b.run_id());
        assert_ne!(a.request_id(), b.request_id());
        let r = RunId::new("run-b").unwrap();
        assert_eq!(a.with_run_id(r.clone()).run_id(), &r);
    }

    #[test]
    fn debug_does_not_print_metadata_values() {
        let c = UserExecutionContext::builder()
            .user_id("alice")
            .thread_id("t")
            .run_id("r")
            .audit_metadata("ip", "secret-ip-value")
            .build()
            .unwrap();
        assert!(!format!("{c:?}").contains("secret-ip-value"));
    }
}
