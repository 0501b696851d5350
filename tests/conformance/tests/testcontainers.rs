//! testcontainers-rs with Redis and PostgreSQL images.
//!
//! testcontainers-modules 0.15, the current release, requires testcontainers
//! 0.27, which conflicts with bollard 0.21 in one build. So these tests use
//! `GenericImage` with the wait conditions of those modules.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sidewhale_conformance::{block_on, server};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};

/// Sends one RESP command and returns the raw reply.
fn redis_command(stream: &mut TcpStream, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .write_all(request.as_bytes())
        .expect("writing to redis failed");
    let mut reply = vec![0; 512];
    let length = stream.read(&mut reply).expect("reading from redis failed");
    String::from_utf8_lossy(&reply[..length]).into_owned()
}

#[test]
fn redis_set_and_get() {
    block_on(async {
        server();
        let redis = GenericImage::new("redis", "7")
            .with_exposed_port(6379.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
            .with_startup_timeout(Duration::from_secs(120))
            .start()
            .await
            .expect("starting redis:7 failed");
        let host = redis
            .get_host()
            .await
            .expect("resolving the host failed")
            .to_string();
        let port = redis
            .get_host_port_ipv4(6379.tcp())
            .await
            .expect("no host port for 6379/tcp");

        let mut stream =
            TcpStream::connect((host.as_str(), port)).expect("connecting to redis failed");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(
            redis_command(&mut stream, &["SET", "greeting", "hello"]),
            "+OK\r\n"
        );
        assert_eq!(
            redis_command(&mut stream, &["GET", "greeting"]),
            "$5\r\nhello\r\n"
        );
        assert_eq!(redis_command(&mut stream, &["GET", "absent"]), "$-1\r\n");
        redis
            .rm()
            .await
            .expect("removing the redis container failed");
    });
}

#[test]
fn postgres_table_round_trip() {
    block_on(async {
        server();
        // The entrypoint first runs a temporary server for the init scripts,
        // whose log goes to stdout through pg_ctl; the real server logs to
        // stderr.
        let ready = "database system is ready to accept connections";
        let postgres = GenericImage::new("postgres", "16")
            .with_exposed_port(5432.tcp())
            .with_wait_for(WaitFor::message_on_stdout(ready))
            .with_wait_for(WaitFor::message_on_stderr(ready))
            .with_env_var("POSTGRES_USER", "tester")
            .with_env_var("POSTGRES_PASSWORD", "secret")
            .with_env_var("POSTGRES_DB", "shop")
            .with_startup_timeout(Duration::from_secs(120))
            .start()
            .await
            .expect("starting postgres:16 failed");
        let host = postgres
            .get_host()
            .await
            .expect("resolving the host failed");
        let port = postgres
            .get_host_port_ipv4(5432.tcp())
            .await
            .expect("no host port for 5432/tcp");

        let config = format!("host={host} port={port} user=tester password=secret dbname=shop");
        let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
            .await
            .expect("connecting to postgres failed");
        let connection = tokio::spawn(connection);

        client
            .batch_execute(
                "CREATE TABLE item (id serial PRIMARY KEY, name text);
                 INSERT INTO item (name) VALUES ('kettle'), ('cup');",
            )
            .await
            .expect("creating and filling the table failed");
        let rows = client
            .query("SELECT name FROM item ORDER BY id", &[])
            .await
            .expect("SELECT failed");
        let names: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        assert_eq!(names, ["kettle", "cup"]);
        let row = client
            .query_one("SELECT current_user::text, current_database()::text", &[])
            .await
            .expect("SELECT current_user failed");
        assert_eq!(row.get::<_, String>(0), "tester");
        assert_eq!(row.get::<_, String>(1), "shop");

        drop(client);
        connection
            .await
            .unwrap()
            .expect("the postgres connection failed");
        postgres
            .rm()
            .await
            .expect("removing the postgres container failed");
    });
}
