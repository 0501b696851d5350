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

use sidewhale_netns::{join, relay, Holder, Strategy, HOLDER_ARGUMENT};
use tokio::io::AsyncReadExt;

/// The argument that makes this binary a TCP server writing a greeting:
/// `serve PORT GREETING`.
const SERVE_ARGUMENT: &str = "serve";

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
            serve_greeting(args[2].parse().expect("port"), &args[3]);
            ExitCode::SUCCESS
        }
        _ => runtime.block_on(run_tests()),
    }
}

/// Answers every connection on 127.0.0.1:`port` with `greeting`.
fn serve_greeting(port: u16, greeting: &str) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("bind");
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
    println!("2 passed, 0 failed");
    ExitCode::SUCCESS
}

/// Starts this binary's greeting server inside `holder`'s namespace.
async fn serve_in(holder: &Holder, port: u16, greeting: &str) -> tokio::process::Child {
    let program = std::env::current_exe().expect("test binary path");
    let mut command = tokio::process::Command::new(program);
    command
        .args([SERVE_ARGUMENT, &port.to_string(), greeting])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
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
