//! Holders and the relay in real namespaces. Runs without libtest's
//! harness, because the test binary doubles as the holder program and as a
//! TCP server started inside a namespace.
//!
//! Every check is skipped, with a message, where the host cannot create
//! network namespaces.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use sidewhale_netns::bridge::{Bridge, InterfaceAddress};
use sidewhale_netns::outbound::{self, Outbound};
use sidewhale_netns::{join, relay, Holder, Strategy, HOLDER_ARGUMENT};
use tokio::io::AsyncReadExt;

/// The argument that makes this binary a TCP server writing a greeting:
/// `serve PORT GREETING`, or `serve PORT GREETING ADDRESS`.
const SERVE_ARGUMENT: &str = "serve";

/// The environment variable that makes the greeting server switch to
/// this user and group id before it binds. `Command::uid` cannot be used,
/// because it drops the privileges that joining the namespace needs.
const SERVE_UID_VARIABLE: &str = "NAMESPACES_TEST_SERVE_UID";

/// The argument that makes this binary a TCP client printing what the
/// server sends: `fetch ADDRESS PORT`.
const FETCH_ARGUMENT: &str = "fetch";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match args.get(1).map(String::as_str) {
        Some(HOLDER_ARGUMENT) => {
            let socket = Path::new(&args[2]);
            runtime
                .block_on(sidewhale_netns::run_holder(socket))
                .expect("holder");
            ExitCode::SUCCESS
        }
        Some(SERVE_ARGUMENT) => {
            let address = args
                .get(4)
                .map_or(Ipv4Addr::LOCALHOST, |text| text.parse().expect("address"));
            serve_greeting(address, args[2].parse().expect("port"), &args[3]);
            ExitCode::SUCCESS
        }
        Some(FETCH_ARGUMENT) => {
            let address: Ipv4Addr = args[2].parse().expect("address");
            let port: u16 = args[3].parse().expect("port");
            let mut stream = std::net::TcpStream::connect((address, port)).expect("connect");
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stream, &mut text).expect("read");
            print!("{text}");
            ExitCode::SUCCESS
        }
        _ => runtime.block_on(run_tests()),
    }
}

/// Writes `greeting` to every connection on `address`:`port`.
fn serve_greeting(address: Ipv4Addr, port: u16, greeting: &str) {
    if let Ok(uid) = std::env::var(SERVE_UID_VARIABLE) {
        let uid: libc::uid_t = uid.parse().expect("uid");
        // SAFETY: setgid and setuid take no pointers.
        let switched = unsafe { libc::setgid(uid) == 0 && libc::setuid(uid) == 0 };
        assert!(switched, "failed to switch to uid {uid}");
    }
    let listener = TcpListener::bind((address, port)).expect("bind");
    println!("listening");
    for stream in listener.incoming() {
        let mut stream = stream.expect("accept");
        std::io::Write::write_all(&mut stream, greeting.as_bytes()).expect("write");
    }
}

async fn run_tests() -> ExitCode {
    let strategy = Strategy::for_current_user();
    if let Err(reason) = strategy.probe() {
        println!("skipping namespace tests: {reason}");
        println!("0 passed, 0 failed, 1 skipped");
        return ExitCode::SUCCESS;
    }
    same_port_in_two_namespaces(strategy).await;
    println!("same_port_in_two_namespaces ... ok");
    relay_refuses_closed_port(strategy).await;
    println!("relay_refuses_closed_port ... ok");
    let mut passed = 2;
    let mut skipped = 0;
    low_ports_for_everyone(strategy).await;
    println!("low_ports_for_everyone ... ok");
    passed += 1;
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun");
    match outbound::find_program() {
        Some(_) if tun.is_err() => {
            println!("outbound_reaches_host_loopback ... skipped: cannot open /dev/net/tun");
            skipped += 1;
        }
        Some(program) => {
            outbound_reaches_host_loopback(strategy, &program).await;
            println!("outbound_reaches_host_loopback ... ok");
            passed += 1;
        }
        None => {
            println!("outbound_reaches_host_loopback ... skipped: no {}", outbound::PROGRAM);
            skipped += 1;
        }
    }
    if strategy.user_namespace {
        println!("bridge_connects_two_namespaces ... skipped: bridges need root");
        skipped += 1;
    } else {
        bridge_connects_two_namespaces(strategy).await;
        println!("bridge_connects_two_namespaces ... ok");
        passed += 1;
    }
    println!("{passed} passed, 0 failed, {skipped} skipped");
    ExitCode::SUCCESS
}

/// Starts this binary's greeting server inside `holder`'s namespace.
async fn serve_in(holder: &Holder, port: u16, greeting: &str) -> tokio::process::Child {
    serve_as(holder, port, greeting, Ipv4Addr::LOCALHOST, None).await
}

/// Starts this binary's greeting server inside `holder`'s namespace on
/// `address`, as user `uid` when given.
async fn serve_as(
    holder: &Holder,
    port: u16,
    greeting: &str,
    address: Ipv4Addr,
    uid: Option<u32>,
) -> tokio::process::Child {
    let program = std::env::current_exe().expect("test binary path");
    let mut command = tokio::process::Command::new(program);
    command
        .args([SERVE_ARGUMENT, &port.to_string(), greeting, &address.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(uid) = uid {
        command.env(SERVE_UID_VARIABLE, uid.to_string());
    }
    join(&mut command, &holder.namespace()).expect("join the namespace");
    let mut child = command.spawn().expect("spawn the server");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut line = [0u8; 10];
    stdout.read_exact(&mut line).await.expect("server ready");
    child
}

async fn greeting_through(socket: &Path, port: u16) -> String {
    let mut stream = relay::connect(socket, port)
        .await
        .expect("relayed connection");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("greeting");
    text
}

/// Finds a port that is free on the host's loopback.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("address").port()
}

async fn same_port_in_two_namespaces(strategy: Strategy) {
    let dir = tempfile::tempdir().expect("temp dir");
    let program = std::env::current_exe().expect("test binary path");
    let first = Holder::spawn(&program, &dir.path().join("a.sock"), strategy)
        .await
        .expect("first holder");
    let second = Holder::spawn(&program, &dir.path().join("b.sock"), strategy)
        .await
        .expect("second holder");
    let port = free_port();

    let _first_server = serve_in(&first, port, "first").await;
    let _second_server = serve_in(&second, port, "second").await;

    assert_eq!(greeting_through(first.socket(), port).await, "first");
    assert_eq!(greeting_through(second.socket(), port).await, "second");
    let on_host = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port));
    assert!(
        on_host.is_err(),
        "a namespace's listener leaked to the host"
    );

    first.stop().await;
    second.stop().await;
}

async fn relay_refuses_closed_port(strategy: Strategy) {
    let dir = tempfile::tempdir().expect("temp dir");
    let program = std::env::current_exe().expect("test binary path");
    let holder = Holder::spawn(&program, &dir.path().join("c.sock"), strategy)
        .await
        .expect("holder");
    // A listener on the host must not be reachable from inside.
    let host = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = host.local_addr().expect("address").port();

    let error = relay::connect(holder.socket(), port).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);

    // The holder stops when asked, and its socket goes with it.
    let socket = holder.socket().to_path_buf();
    holder.stop().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!socket.exists(), "socket left behind");
}

/// Runs this binary's client in `holder`'s namespace and returns what it
/// printed.
async fn fetch_in(holder: &Holder, address: Ipv4Addr, port: u16) -> String {
    let program = std::env::current_exe().expect("test binary path");
    let mut command = tokio::process::Command::new(program);
    command.args([FETCH_ARGUMENT, &address.to_string(), &port.to_string()]);
    join(&mut command, &holder.namespace()).expect("join the namespace");
    let output = command.output().await.expect("run the client");
    assert!(output.status.success(), "client failed: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8 greeting")
}

async fn low_ports_for_everyone(strategy: Strategy) {
    let dir = tempfile::tempdir().expect("temp dir");
    let program = std::env::current_exe().expect("test binary path");
    let holder = Holder::spawn(&program, &dir.path().join("d.sock"), strategy)
        .await
        .expect("holder");
    let mut command = tokio::process::Command::new("cat");
    command.arg("/proc/sys/net/ipv4/ip_unprivileged_port_start");
    join(&mut command, &holder.namespace()).expect("join the namespace");
    let output = command.output().await.expect("run cat");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "0");

    // Only root can switch to another user; a user namespace maps one id.
    if !strategy.user_namespace {
        let _server = serve_as(&holder, 80, "low", Ipv4Addr::LOCALHOST, Some(65534)).await;
        assert_eq!(greeting_through(holder.socket(), 80).await, "low");
    }
    holder.stop().await;
}

async fn outbound_reaches_host_loopback(strategy: Strategy, slirp: &Path) {
    let dir = tempfile::tempdir().expect("temp dir");
    let program = std::env::current_exe().expect("test binary path");
    let holder = Holder::spawn(&program, &dir.path().join("e.sock"), strategy)
        .await
        .expect("holder");
    let outbound = Outbound::start(slirp, &holder.namespace())
        .await
        .expect("slirp4netns");
    let host = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = host.local_addr().expect("address").port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = host.accept().expect("accept");
        std::io::Write::write_all(&mut stream, b"from the host").expect("write");
    });

    let text = fetch_in(&holder, outbound::HOST_ADDRESS, port).await;

    assert_eq!(text, "from the host");
    server.join().expect("host server");
    outbound.stop().await;
    holder.stop().await;
}

async fn bridge_connects_two_namespaces(strategy: Strategy) {
    let dir = tempfile::tempdir().expect("temp dir");
    let program = std::env::current_exe().expect("test binary path");
    let gateway = InterfaceAddress {
        address: Ipv4Addr::new(172, 30, 0, 1),
        prefix_len: 16,
    };
    let bridge = Bridge::create(&program, &dir.path().join("br.sock"), gateway)
        .await
        .expect("bridge");
    let first = Holder::spawn(&program, &dir.path().join("f.sock"), strategy)
        .await
        .expect("first holder");
    let second = Holder::spawn(&program, &dir.path().join("g.sock"), strategy)
        .await
        .expect("second holder");
    let first_address = Ipv4Addr::new(172, 30, 0, 2);
    let second_address = Ipv4Addr::new(172, 30, 0, 3);
    for (holder, port, address) in [(&first, "va", first_address), (&second, "vb", second_address)] {
        let address = InterfaceAddress {
            address,
            prefix_len: 16,
        };
        let [_, _, _, last] = address.address.octets();
        let mac = format!("02:42:ac:1e:00:{last:02x}");
        bridge
            .connect(&holder.namespace(), port, "eth0", address, &mac)
            .await
            .expect("connect to the bridge");
    }
    let _server = serve_as(&first, 6379, "first over the bridge", first_address, None).await;

    let text = fetch_in(&second, first_address, 6379).await;
    assert_eq!(text, "first over the bridge");

    bridge.disconnect("vb").await.expect("disconnect");
    bridge.disconnect("vb").await.expect("disconnect twice");
    let mut command = tokio::process::Command::new(&program);
    command.args([FETCH_ARGUMENT, &first_address.to_string(), "6379"]);
    join(&mut command, &second.namespace()).expect("join the namespace");
    let output = command.output().await.expect("run the client");
    assert!(!output.status.success(), "reached a peer after disconnect");

    first.stop().await;
    second.stop().await;
    bridge.stop().await;
}
