//! Janus VideoRoom signaling over the Janus WebSocket API (subprotocol `janus-protocol`).
//!
//! Used to put the same load on Janus 1.1.x that the load generator puts on medrelay.
//! One [`JanusClient`] is one Janus session on one WebSocket; it can hold any number of
//! plugin handles (publishers and subscribers), and clients can be shared or made per
//! participant.
//!
//! Trickle: our peers put every candidate in their SDP, so each JSEP we send carries
//! `"trickle": false` and is followed by `{"janus":"trickle","candidate":{"completed":true}}`.
//! Janus runs in half-trickle mode (its default, `full_trickle = false`): its own offers and
//! answers already contain its candidates and `a=end-of-candidates`, so the SDPs returned
//! here are complete.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Mutex, OnceCell, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const PLUGIN: &str = "janus.plugin.videoroom";
const KEEPALIVE_EVERY: Duration = Duration::from_secs(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const FEED_WAIT: Duration = Duration::from_secs(20);

/// Errors from talking to Janus.
#[derive(Debug, thiserror::Error)]
pub enum JanusError {
    /// The WebSocket could not be opened or failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The connection to Janus is gone (socket closed or the reader task ended).
    #[error("connection to Janus closed")]
    Closed,
    /// Janus did not answer a request within the request timeout (30 s).
    #[error("timed out waiting for Janus to answer {0}")]
    Timeout(String),
    /// Janus core refused a request (`"janus":"error"`).
    #[error("janus error {code}: {reason}")]
    Janus { code: i64, reason: String },
    /// The VideoRoom plugin refused a request (`error_code` in its plugin data).
    #[error("videoroom error {code}: {reason}")]
    Plugin { code: i64, reason: String },
    /// Janus answered with something this client did not expect.
    #[error("unexpected reply from Janus: {0}")]
    Protocol(String),
}

type Pending = Arc<Mutex<HashMap<String, PendingTx>>>;

/// What the reader does with replies to one transaction.
struct PendingTx {
    /// Whether an `ack` ends the transaction (trickle, keepalive) or an `event` is awaited
    /// after it (plugin `message` requests).
    ack_is_final: bool,
    reply: oneshot::Sender<Value>,
}

/// One Janus session on one WebSocket (a background task reads the socket, answers transactions, sends keepalives every 20 s).
pub struct JanusClient {
    session_id: u64,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_tx: AtomicU64,
    tx_prefix: u64,
    /// Handle used for room management requests (`create`), attached on first use.
    control_handle: OnceCell<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl JanusClient {
    /// Opens the WebSocket at `url` (e.g. `ws://127.0.0.1:8188`) and creates a Janus session.
    pub async fn connect(url: &str) -> Result<Self, JanusError> {
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("janus-protocol"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));

        let writer = tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                if let Err(e) = sink.send(msg).await {
                    tracing::debug!("janus websocket send failed: {e}");
                    break;
                }
            }
            let _ = sink.close().await;
        });

        let reader_pending = pending.clone();
        let reader_out = out.clone();
        let reader = tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let text = match msg {
                    Ok(Message::Text(t)) => t.to_string(),
                    Ok(Message::Binary(b)) => String::from_utf8_lossy(&b).into_owned(),
                    Ok(Message::Ping(p)) => {
                        let _ = reader_out.send(Message::Pong(p));
                        continue;
                    }
                    Ok(Message::Close(_)) => break,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!("janus websocket read failed: {e}");
                        break;
                    }
                };
                let value: Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!("janus sent invalid JSON ({e}): {text}");
                        continue;
                    }
                };
                dispatch(&reader_pending, value).await;
            }
            // Dropping every waiting sender wakes its request with `Closed`.
            reader_pending.lock().await.clear();
        });

        let mut client = JanusClient {
            session_id: 0,
            out,
            pending,
            next_tx: AtomicU64::new(1),
            tx_prefix: rand::random::<u64>(),
            control_handle: OnceCell::new(),
            tasks: vec![writer, reader],
        };
        let reply = client.request(json!({"janus": "create"}), false).await?;
        client.session_id = reply["data"]["id"]
            .as_u64()
            .ok_or_else(|| JanusError::Protocol(format!("create without session id: {reply}")))?;

        let ka_out = client.out.clone();
        let session_id = client.session_id;
        let tx_prefix = client.tx_prefix;
        client.tasks.push(tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                n += 1;
                let msg = json!({
                    "janus": "keepalive",
                    "session_id": session_id,
                    "transaction": format!("{tx_prefix:x}-ka{n}"),
                });
                if ka_out.send(Message::Text(msg.to_string().into())).is_err() {
                    break;
                }
            }
        }));
        Ok(client)
    }

    /// Creates VideoRoom room `room` (VP8 video, Opus audio, `max_publishers` publishers, a 3 Mbit/s bitrate cap, no recording).
    ///
    /// An id that already exists fails with `JanusError::Plugin { code: 427, .. }`.
    pub async fn create_room(&self, room: u64, max_publishers: u32) -> Result<(), JanusError> {
        let handle = self.control_handle().await?;
        let body = json!({
            "request": "create",
            "room": room,
            "description": format!("loadgen-{room}"),
            "publishers": max_publishers,
            "bitrate": 3_000_000,
            "bitrate_cap": true,
            "fir_freq": 10,
            "audiocodec": "opus",
            "videocodec": "vp8",
            "record": false,
            "permanent": false,
            "notify_joining": false,
        });
        let data = self.plugin_message(handle, body, None).await?.0;
        match data["videoroom"].as_str() {
            Some("created") => Ok(()),
            _ => Err(JanusError::Protocol(format!("create room: {data}"))),
        }
    }

    /// Attaches a handle, joins `room` as a publisher and configures it with `offer_sdp` (audio+video); returns (the publisher's feed id, Janus's answer SDP).
    ///
    /// Trickle completion is sent for the handle, so nothing else is needed for ICE.
    pub async fn publish(
        &self,
        room: u64,
        display: &str,
        offer_sdp: &str,
    ) -> Result<(u64, String), JanusError> {
        let handle = self.attach().await?;
        let join = json!({
            "request": "join",
            "ptype": "publisher",
            "room": room,
            "display": display,
        });
        let (data, _) = self.plugin_message(handle, join, None).await?;
        if data["videoroom"].as_str() != Some("joined") {
            return Err(JanusError::Protocol(format!("publisher join: {data}")));
        }
        let feed = data["id"]
            .as_u64()
            .ok_or_else(|| JanusError::Protocol(format!("joined without feed id: {data}")))?;
        let configure = json!({"request": "configure", "audio": true, "video": true});
        let jsep = json!({"type": "offer", "sdp": offer_sdp, "trickle": false});
        let (data, jsep) = self.plugin_message(handle, configure, Some(jsep)).await?;
        let answer = sdp_of(jsep, "answer", &data)?;
        self.trickle_complete(handle).await?;
        Ok((feed, answer))
    }

    /// Attaches a handle and joins `room` as a subscriber to every stream of `feeds`; returns (handle id, Janus's offer SDP).
    ///
    /// Janus only accepts a feed once its publisher's PeerConnection is up (ICE+DTLS done);
    /// until then it answers 428 "No such feed", and the join is retried every 100 ms for up
    /// to 20 s.
    pub async fn subscribe(&self, room: u64, feeds: &[u64]) -> Result<(u64, String), JanusError> {
        let handle = self.attach().await?;
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        let join = json!({
            "request": "join",
            "ptype": "subscriber",
            "room": room,
            "streams": streams,
        });
        let deadline = tokio::time::Instant::now() + FEED_WAIT;
        let (data, jsep) = loop {
            match self.plugin_message(handle, join.clone(), None).await {
                Err(JanusError::Plugin { code: 428, .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        };
        if data["videoroom"].as_str() != Some("attached") {
            return Err(JanusError::Protocol(format!("subscriber join: {data}")));
        }
        let offer = sdp_of(jsep, "offer", &data)?;
        Ok((handle, offer))
    }

    /// Sends the subscriber's answer ("start"), then trickle completion for `handle`.
    pub async fn start(&self, handle: u64, answer_sdp: &str) -> Result<(), JanusError> {
        let jsep = json!({"type": "answer", "sdp": answer_sdp, "trickle": false});
        let (data, _) = self
            .plugin_message(handle, json!({"request": "start"}), Some(jsep))
            .await?;
        if data["started"].as_str() != Some("ok") {
            return Err(JanusError::Protocol(format!("start: {data}")));
        }
        self.trickle_complete(handle).await
    }

    /// Tells Janus that our candidates are all in the SDP (trickle completed) for `handle`.
    async fn trickle_complete(&self, handle: u64) -> Result<(), JanusError> {
        let msg = json!({
            "janus": "trickle",
            "handle_id": handle,
            "candidate": {"completed": true},
        });
        self.request(msg, true).await.map(|_| ())
    }

    /// Destroys the session (Janus drops all its handles) and closes the WebSocket.
    pub async fn close(self) -> Result<(), JanusError> {
        let res = self.request(json!({"janus": "destroy"}), false).await;
        let _ = self.out.send(Message::Close(None));
        res.map(|_| ())
    }

    async fn control_handle(&self) -> Result<u64, JanusError> {
        self.control_handle
            .get_or_try_init(|| self.attach())
            .await
            .copied()
    }

    async fn attach(&self) -> Result<u64, JanusError> {
        let reply = self
            .request(json!({"janus": "attach", "plugin": PLUGIN}), false)
            .await?;
        reply["data"]["id"]
            .as_u64()
            .ok_or_else(|| JanusError::Protocol(format!("attach without handle id: {reply}")))
    }

    /// Sends a plugin `message` on `handle` and waits for its final reply (a synchronous
    /// `success` or the `event` after the `ack`); returns (plugin data, jsep).
    async fn plugin_message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<(Value, Option<Value>), JanusError> {
        let mut msg = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(jsep) = jsep {
            msg["jsep"] = jsep;
        }
        let mut reply = self.request(msg, false).await?;
        let data = reply["plugindata"]["data"].take();
        if data.is_null() {
            return Err(JanusError::Protocol(format!("no plugin data: {reply}")));
        }
        if let Some(code) = data["error_code"].as_i64() {
            let reason = data["error"].as_str().unwrap_or_default().to_string();
            return Err(JanusError::Plugin { code, reason });
        }
        let jsep = match reply["jsep"].take() {
            Value::Null => None,
            j => Some(j),
        };
        Ok((data, jsep))
    }

    /// Sends one Janus API request (session id and transaction added) and waits for its reply.
    async fn request(&self, mut msg: Value, ack_is_final: bool) -> Result<Value, JanusError> {
        let n = self.next_tx.fetch_add(1, Ordering::Relaxed);
        let transaction = format!("{:x}-{n}", self.tx_prefix);
        let what = msg["janus"].as_str().unwrap_or("request").to_string();
        msg["transaction"] = Value::String(transaction.clone());
        if self.session_id != 0 {
            msg["session_id"] = json!(self.session_id);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().await.insert(
            transaction.clone(),
            PendingTx {
                ack_is_final,
                reply: tx,
            },
        );
        if self
            .out
            .send(Message::Text(msg.to_string().into()))
            .is_err()
        {
            self.pending.lock().await.remove(&transaction);
            return Err(JanusError::Closed);
        }
        let reply = match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(JanusError::Closed),
            Err(_) => {
                self.pending.lock().await.remove(&transaction);
                return Err(JanusError::Timeout(what));
            }
        };
        if reply["janus"].as_str() == Some("error") {
            return Err(JanusError::Janus {
                code: reply["error"]["code"].as_i64().unwrap_or(0),
                reason: reply["error"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        Ok(reply)
    }
}

impl Drop for JanusClient {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Routes one message from Janus to the request waiting for it, if any.
async fn dispatch(pending: &Pending, value: Value) {
    let kind = value["janus"].as_str().unwrap_or_default();
    let transaction = value["transaction"].as_str();
    if let Some(transaction) = transaction {
        let mut pending = pending.lock().await;
        let done = match pending.get(transaction) {
            Some(p) => kind != "ack" || p.ack_is_final,
            None => false,
        };
        if done {
            if let Some(p) = pending.remove(transaction) {
                let _ = p.reply.send(value);
            }
            return;
        }
        if kind == "ack" {
            return;
        }
    }
    // Unsolicited: webrtcup, media, slowlink, hangup, publisher lists, ...
    match kind {
        "hangup" | "slowlink" | "timeout" | "detached" => {
            tracing::info!(sender = ?value["sender"].as_u64(), "janus {kind}: {value}")
        }
        _ => tracing::debug!("janus {kind}: {value}"),
    }
}

/// Takes the SDP of the expected type out of a reply's jsep.
fn sdp_of(jsep: Option<Value>, kind: &str, data: &Value) -> Result<String, JanusError> {
    let jsep = jsep.ok_or_else(|| JanusError::Protocol(format!("no {kind} jsep with {data}")))?;
    if jsep["type"].as_str() != Some(kind) {
        return Err(JanusError::Protocol(format!(
            "expected {kind} jsep, got {jsep}"
        )));
    }
    jsep["sdp"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| JanusError::Protocol(format!("jsep without sdp: {jsep}")))
}
