//! ICE-TCP for the media loop (RFC 6544, passive side): a TCP listener on the media port for
//! networks that block UDP. Each connection carries RFC 4571 frames (a 16-bit length, then a
//! STUN, DTLS, RTP or RTCP packet); the connection tasks only move frames between the socket
//! and the media loop, which feeds them to the router like datagrams.

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tracing::debug;

/// Largest frame accepted; a larger length prefix closes the connection.
const MAX_FRAME: usize = 2048;
/// Connections at most; more are refused (closed at once).
const MAX_CONNECTIONS: usize = 4096;
/// A connection that carries nothing for this long is closed (ICE consent checks come
/// every few seconds on a live one).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames waiting to be written to one connection; more are dropped, as UDP would.
const WRITE_QUEUE: usize = 1024;

/// What the connections tell the media loop.
pub(crate) enum TcpEvent {
    /// A connection opened; frames for `remote` go to `writer`.
    Opened {
        remote: SocketAddr,
        writer: mpsc::Sender<Bytes>,
    },
    /// A frame arrived from `remote`.
    Frame { remote: SocketAddr, data: BytesMut },
    /// The connection from `remote` closed.
    Closed { remote: SocketAddr },
}

/// The framing of one connection: 16-bit big-endian length, then the packet.
fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(2)
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Accepts connections until the media loop stops listening.
pub(crate) async fn accept(listener: TcpListener, events: mpsc::Sender<TcpEvent>) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if events.is_closed() {
            return;
        }
        if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::Relaxed);
            debug!(%remote, "too many ICE-TCP connections; refused");
            continue;
        }
        let (events, open) = (events.clone(), open.clone());
        tokio::spawn(async move {
            connection(stream, remote, &events).await;
            let _ = events.send(TcpEvent::Closed { remote }).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Moves one connection's frames until it closes, idles, or sends a frame too large.
async fn connection(stream: TcpStream, remote: SocketAddr, events: &mpsc::Sender<TcpEvent>) {
    let _ = stream.set_nodelay(true);
    let (mut sink, mut frames) = Framed::new(stream, codec()).split();
    let (writer, mut outgoing) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    if events
        .send(TcpEvent::Opened { remote, writer })
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            frame = tokio::time::timeout(IDLE_TIMEOUT, frames.next()) => match frame {
                Ok(Some(Ok(data))) => {
                    if events.send(TcpEvent::Frame { remote, data }).await.is_err() {
                        return;
                    }
                }
                Ok(Some(Err(e))) => {
                    debug!(%remote, error = %e, "ICE-TCP framing error; closing");
                    return;
                }
                Ok(None) => return,
                Err(_) => {
                    debug!(%remote, "ICE-TCP connection idle; closing");
                    return;
                }
            },
            out = outgoing.recv() => match out {
                Some(data) => {
                    if sink.send(data).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, mpsc::Receiver<TcpEvent>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(accept(listener, tx));
        (TcpStream::connect(addr).await.unwrap(), rx)
    }

    #[tokio::test]
    async fn frames_go_both_ways_with_their_length_prefix() {
        let (mut client, mut events) = pair().await;
        let Some(TcpEvent::Opened { writer, .. }) = events.recv().await else {
            panic!("the connection is announced first");
        };
        // Two frames in one write, the second split over two writes.
        client.write_all(&[0, 3, 1, 2, 3, 0, 2, 9]).await.unwrap();
        client.write_all(&[8]).await.unwrap();
        for expected in [&[1u8, 2, 3][..], &[9, 8][..]] {
            let Some(TcpEvent::Frame { data, .. }) = events.recv().await else {
                panic!("a frame");
            };
            assert_eq!(&data[..], expected);
        }
        writer.send(Bytes::from_static(b"abc")).await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\0\x03abc");
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_only_that_connection() {
        let (mut client, mut events) = pair().await;
        assert!(matches!(events.recv().await, Some(TcpEvent::Opened { .. })));
        client.write_all(&[0xff, 0xff, 0]).await.unwrap();
        assert!(matches!(events.recv().await, Some(TcpEvent::Closed { .. })));
        // The server closed the connection: the client reads its end (or a reset, since the
        // server left bytes unread).
        let mut rest = Vec::new();
        match client.read_to_end(&mut rest).await {
            Ok(n) => assert_eq!(n, 0),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
}
