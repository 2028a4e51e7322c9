//! nginx (issue 15, item 2): Debian's nginx serves HTTPS with its private
//! key in hahsm through the libp11 engine (`ssl_certificate_key
//! engine:pkcs11:…`), with two worker processes forked after the master
//! loaded the module. 1,000 handshakes from curl, each a new TLS connection,
//! all succeed while a member is killed (after 300) and restarted (after
//! 600), and the workers' module drops the killed member.
mod t20_pkcs11_support;
use hahsm_it::cluster::{Cluster, GROUP, PIN};
use hahsm_it::{run_command, ProcessGroup};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use t20_pkcs11_support::module_path;

fn handshake(dir: &Path, port: u16) -> Result<(), String> {
    let r = run_command(Command::new("curl").args([
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        dir.join("cert.pem").to_str().unwrap(),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &format!("https://localhost:{port}/"),
    ]));
    if r.ok && r.stdout == "hello from hahsm\n" {
        Ok(())
    } else {
        Err(format!("{}{}", r.stdout, r.stderr))
    }
}

#[test]
fn nginx_serves_https_with_its_key_in_hahsm_across_a_killed_member() {
    let mut c = Cluster::new(3);
    let dir = c.work.path().join("nginx");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let conf = c.ha_only_conf(Some(1500));
    let ha_log = dir.join("ha.log");
    let module = module_path();
    let openssl_cnf = dir.join("openssl.cnf");
    std::fs::write(
        &openssl_cnf,
        format!(
            "openssl_conf = conf\n[conf]\nengines = engines\n[engines]\npkcs11 = pkcs11\n\
             [pkcs11]\nengine_id = pkcs11\nMODULE_PATH = {}\ninit = 1\n",
            module.display()
        ),
    )
    .unwrap();
    let env = |cmd: &mut Command| {
        cmd.env("HAHSM_CONF", &conf)
            .env("HAHSM_HA_LOG", &ha_log)
            .env("HAHSM_PKCS11_LOG", dir.join("pkcs11.log"));
    };

    // The key, made on the token; a certificate for it, signed by it.
    let mut keygen = Command::new("pkcs11-tool");
    keygen.args([
        "--module",
        module.to_str().unwrap(),
        "--login",
        "--pin",
        PIN,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "nginx-key",
        "--id",
        "52",
    ]);
    env(&mut keygen);
    let r = run_command(keygen.env("OPENSSL_CONF", "/dev/null"));
    assert!(r.ok, "pkcs11-tool --keypairgen: {}", r.stderr);
    let uri = format!("pkcs11:token={GROUP};object=nginx-key;type=private;pin-value={PIN}");
    let mut req = Command::new("openssl");
    req.args([
        "req",
        "-new",
        "-x509",
        "-days",
        "30",
        "-subj",
        "/CN=localhost",
        "-engine",
        "pkcs11",
        "-keyform",
        "engine",
    ])
    .arg("-key")
    .arg(&uri)
    .arg("-out")
    .arg(dir.join("cert.pem"))
    .env("OPENSSL_CONF", &openssl_cnf);
    env(&mut req);
    let r = run_command(&mut req);
    assert!(r.ok, "openssl req through the engine: {}", r.stderr);

    let port = hahsm_it::free_port();
    let d = dir.display();
    let nginx_conf = dir.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "daemon off;\nmaster_process on;\nuser root;\nworker_processes 2;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\nenv OPENSSL_CONF;\nenv HAHSM_CONF;\nenv HAHSM_HA_LOG;\nenv HAHSM_PKCS11_LOG;\n\
             events {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n\
               client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
               uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {d}/cert.pem;\n\
                 ssl_certificate_key \"engine:pkcs11:{uri}\";\n\
                 location / {{ return 200 \"hello from hahsm\\n\"; }}\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-c")
        .arg(&nginx_conf)
        .arg("-p")
        .arg(&dir)
        .env("OPENSSL_CONF", &openssl_cnf);
    env(&mut cmd);
    let _nginx = ProcessGroup::spawn(&mut cmd, "nginx");
    let up = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "nginx does not listen:\n{}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    handshake(&dir, port).expect("the first handshake");
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    assert_eq!(
        log.matches("start worker process ").count(),
        2,
        "two workers forked:\n{log}"
    );

    let mut failures = Vec::new();
    for i in 0..1000 {
        if i == 300 {
            c.members[1].kill9();
        }
        if i == 600 {
            c.members[1].spawn();
        }
        if let Err(e) = handshake(&dir, port) {
            failures.push(format!("handshake {i}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 1000 handshakes failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let ha = std::fs::read_to_string(&ha_log).unwrap_or_default();
    let dropped = format!("has dropped member: {}", c.serials[1]);
    assert!(
        ha.contains(&dropped),
        "the workers' module never dropped the killed member:\n{ha}"
    );
}
