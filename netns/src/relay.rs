//! The relay between the server's network namespace and a container's.
//!
//! The holder accepts connections on a unix socket. Each client first
//! writes the container port as two big-endian bytes. The holder connects
//! to that port on its loopback, which is the container's, and replies
//! with one status byte: `STATUS_CONNECTED`, or `STATUS_REFUSED` when
//! nothing listens there. After a connected status the stream carries the
//! TCP connection's bytes in both directions.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;

pub const STATUS_CONNECTED: u8 = 0;
pub const STATUS_REFUSED: u8 = 1;

/// Accepts relay clients on `listener` until the future is dropped, which
/// also closes every relayed connection.
pub async fn serve(listener: UnixListener) {
    let mut connections = JoinSet::new();
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                tracing::warn!(%error, "relay failed to accept a connection");
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(relay_one(client));
    }
}

async fn relay_one(mut client: UnixStream) {
    let port = match client.read_u16().await {
        Ok(port) => port,
        Err(error) => {
            tracing::debug!(%error, "relay client closed before naming a port");
            return;
        }
    };
    let Some(mut server) = connect_loopback(port).await else {
        let _ = client.write_all(&[STATUS_REFUSED]).await;
        return;
    };
    if client.write_all(&[STATUS_CONNECTED]).await.is_err() {
        return;
    }
    let _ = server.set_nodelay(true);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
        tracing::debug!(port, %error, "relayed connection ended with an error");
    }
}

/// Connects to `port` on 127.0.0.1, or on ::1 for a listener bound to the
/// IPv6 loopback only.
async fn connect_loopback(port: u16) -> Option<TcpStream> {
    let addresses = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ];
    for address in addresses {
        if let Ok(stream) = TcpStream::connect(address).await {
            return Some(stream);
        }
    }
    None
}

/// Opens a relayed connection to `port` inside the namespace whose relay
/// serves `socket`. Fails with `ConnectionRefused` when nothing listens on
/// that port in the container.
pub async fn connect(socket: &Path, port: u16) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket).await?;
    stream.write_u16(port).await?;
    match stream.read_u8().await? {
        STATUS_CONNECTED => Ok(stream),
        _ => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("nothing listens on port {port} in the container"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn relay_in(dir: &Path) -> std::path::PathBuf {
        let socket = dir.join("relay.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(serve(listener));
        socket
    }

    #[tokio::test]
    async fn relay_carries_bytes_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let socket = relay_in(dir.path()).await;
        let upstream = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = upstream.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = upstream.accept().await.unwrap();
            let mut request = [0u8; 4];
            stream.read_exact(&mut request).await.unwrap();
            stream.write_all(b"pong").await.unwrap();
        });

        let mut stream = connect(&socket, port).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await.unwrap();

        assert_eq!(&reply, b"pong");
    }

    #[tokio::test]
    async fn relay_reports_closed_port() {
        let dir = tempfile::tempdir().unwrap();
        let socket = relay_in(dir.path()).await;
        // Bind and drop a listener to find a port that nothing listens on.
        let port = {
            let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            probe.local_addr().unwrap().port()
        };

        let error = connect(&socket, port).await.unwrap_err();

        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    }
}
