//! Port relocation under the proot executor: containers that share the
//! host's network listen on the same port without colliding.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{container, finish, process, TestContainer, TIMEOUT};
use sidewhale_core::{Executor, PortRelocation, Process, RelocatedPorts};
use sidewhale_executors::{ProotExecutor, ProotOptions};
use tokio::io::AsyncReadExt;

/// The loopback address at which the peer container is reached.
const PEER: Ipv4Addr = Ipv4Addr::new(127, 18, 0, 2);

/// Serves `name` on port 80 to every connection, for ever.
fn server(name: &str) -> TestContainer {
    container(&["nc", "-ll", "-p", "80", "-e", "echo", name])
}

/// Relocates `test`'s ports, with `peer` reachable at `PEER`.
fn relocate(test: &mut TestContainer, peer: Option<Arc<RelocatedPorts>>) -> Arc<RelocatedPorts> {
    let ports = Arc::new(RelocatedPorts::default());
    test.spec.port_relocation = Some(PortRelocation {
        ports: ports.clone(),
        peers: Arc::new(move |address| peer.clone().filter(|_| address == PEER)),
    });
    ports
}

/// Waits until the container has bound `port`, and returns the host port.
async fn host_port(ports: &RelocatedPorts, port: u16) -> u16 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(host_port) = ports.host_port(port) {
            return host_port;
        }
        assert!(Instant::now() < deadline, "port {port} was not relocated in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_from_host(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .expect("connect to the relocated port");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("read");
    text
}

async fn exec(executor: &ProotExecutor, test: &TestContainer, argv: &[&str]) -> String {
    let finished = finish(executor.exec(&test.spec, &process(argv)).await.unwrap()).await;
    assert_eq!(finished.stderr, "");
    finished.stdout
}

fn executor() -> ProotExecutor {
    let executor = ProotExecutor::new(ProotOptions::default());
    assert!(
        executor.supports_port_relocation(),
        "this kernel does not let proot relocate ports (seccomp listeners, pidfd_getfd)"
    );
    executor
}

async fn stop(executor: &ProotExecutor, test: &TestContainer, process: Process) {
    executor.cleanup(&test.spec).await.unwrap();
    let _ = tokio::time::timeout(TIMEOUT, process.exit).await;
}

#[tokio::test]
async fn same_low_port_in_two_containers() {
    let executor = executor();
    let mut first = server("first");
    let mut second = server("second");
    let first_ports = relocate(&mut first, None);
    let second_ports = relocate(&mut second, None);

    let first_process = executor.start(&first.spec).await.unwrap();
    let second_process = executor.start(&second.spec).await.unwrap();
    let first_port = host_port(&first_ports, 80).await;
    let second_port = host_port(&second_ports, 80).await;

    assert_ne!(first_port, second_port);
    assert!(first_port >= 1024, "{first_port}");
    assert!(second_port >= 1024, "{second_port}");
    assert_eq!(read_from_host(first_port).await, "first\n");
    assert_eq!(read_from_host(second_port).await, "second\n");
    // From inside, each container finds its own listener on port 80.
    assert_eq!(exec(&executor, &first, &["nc", "127.0.0.1", "80"]).await, "first\n");
    assert_eq!(exec(&executor, &second, &["nc", "127.0.0.1", "80"]).await, "second\n");

    // The kernel's table shows the host port, but the container reads its own.
    let tables = exec(&executor, &first, &["cat", "/proc/net/tcp", "/proc/net/tcp6"]).await;
    let listening = listening_ports(&tables);
    assert!(listening.contains(&80), "{listening:?}");
    assert!(!listening.contains(&first_port), "{listening:?}");
    assert!(listening.contains(&second_port), "{listening:?}");

    stop(&executor, &first, first_process).await;
    stop(&executor, &second, second_process).await;
}

/// Returns the local ports in LISTEN state (0A) of `/proc/net/tcp` tables.
fn listening_ports(tables: &str) -> Vec<u16> {
    tables
        .lines()
        .filter(|line| !line.trim_start().starts_with("sl"))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (_, port) = fields.get(1)?.rsplit_once(':')?;
            (fields.get(3) == Some(&"0A")).then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect()
}

#[tokio::test]
async fn peer_reached_at_loopback_address() {
    let executor = executor();
    let mut server_container = server("peer");
    let server_ports = relocate(&mut server_container, None);
    let mut client = container(&["sleep", "1000"]);
    relocate(&mut client, Some(server_ports.clone()));

    let server_process = executor.start(&server_container.spec).await.unwrap();
    let client_process = executor.start(&client.spec).await.unwrap();
    host_port(&server_ports, 80).await;

    let peer = PEER.to_string();
    assert_eq!(exec(&executor, &client, &["nc", &peer, "80"]).await, "peer\n");
    // Relocation puts nothing in the container's environment.
    let environment = exec(&executor, &client, &["env"]).await;
    assert!(!environment.contains("PROOT"), "{environment}");

    stop(&executor, &server_container, server_process).await;
    stop(&executor, &client, client_process).await;
}

#[tokio::test]
async fn unrelocated_port_left_alone() {
    let executor = executor();
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || {
        use std::io::Write;
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(b"host\n").unwrap();
    });
    let mut test = container(&["nc", "127.0.0.1", &port.to_string()]);
    relocate(&mut test, None);

    let finished = finish(executor.start(&test.spec).await.unwrap()).await;

    assert_eq!(finished.stdout, "host\n");
    accept.join().unwrap();
}
