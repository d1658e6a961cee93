//! A Server-Sent Events reader over `reqwest`, for the tests of the HTTP API.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

/// A Server-Sent Events reader.
pub(crate) struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

/// One event: its `event:` name (empty for a plain message), `id:` and JSON data.
#[derive(Debug)]
pub(crate) struct SseFrame {
    pub(crate) name: String,
    pub(crate) id: Option<u64>,
    pub(crate) data: Value,
}

impl Sse {
    pub(crate) fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped); `None` when the stream ended. 20 s at
    /// most.
    pub(crate) async fn next(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut frame = SseFrame {
                    name: String::new(),
                    id: None,
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        frame.name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        frame.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a comment (keep-alive)
                }
                frame.data = serde_json::from_str(&data).unwrap();
                return Some(frame);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.body.next())
                .await
                .expect("an event within 20 s");
            match chunk {
                Some(Ok(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Some(Err(e)) => panic!("stream error: {e}"),
                None => return None,
            }
        }
    }
}

/// Reads a stream's events up to and including the terminal one, checking that seqs go on
/// from `after` without a hole; returns the events' bodies.
pub(crate) async fn read_to_end(sse: &mut Sse, mut after: u64) -> Vec<Value> {
    let mut events = Vec::new();
    while let Some(f) = sse.next().await {
        assert_eq!(f.name, "", "no gap expected: {f:?}");
        assert_eq!(f.id, Some(after + 1), "{f:?}");
        after += 1;
        let terminal = f.data["event"]["type"] == "agent_completed";
        events.push(f.data["event"].clone());
        if terminal {
            assert!(
                sse.next().await.is_none(),
                "the stream ends after the terminal event"
            );
            return events;
        }
    }
    panic!("the stream ended before the terminal event");
}
