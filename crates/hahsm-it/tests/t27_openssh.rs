//! Issue 15, item 1: OpenSSH (Debian's `openssh-client` and
//! `openssh-server`, which scripts/test-deps.sh installs) with a user key held
//! in hahsm, through the HA slot of a three-member group. pkcs11-tool makes
//! an EC P-256 and an RSA-2048 key; `ssh-keygen -D` lists each as the key
//! pkcs11-tool exports; a private `sshd` on a loopback port accepts a login
//! with each, with `ssh -I` and through `ssh-agent` (`ssh-add -s`). Then 200 logins in a row, through the
//! agent and every tenth with `ssh -I`, while member 0 is killed (`kill -9`)
//! and later restarted: OpenSSH retries nothing itself, so every one of them
//! must succeed.
//!
//! docs/integrations.md copies its configuration from here.
mod t20_pkcs11_support;

use hahsm_it::cluster::{Cluster, GROUP, PIN};
use std::ffi::OsString;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use t20_pkcs11_support::{module_path, tool};

const LIMIT: Duration = Duration::from_secs(60);
const LABEL: &str = "t27-ssh-user";
const ID: &str = "27";
const RSA_LABEL: &str = "t27-ssh-rsa";
const RSA_ID: &str = "28";
const LOGINS: usize = 200;

/// A child process (sshd, ssh-agent) killed and reaped when dropped, also
/// when the test panics.
struct Guard {
    name: &'static str,
    child: Child,
}

impl Guard {
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("t27: {} stopped", self.name);
    }
}

struct Env {
    c: Cluster,
    module: String,
    conf: PathBuf,
    ha_log: PathBuf,
    pkcs11_log: PathBuf,
    askpass: PathBuf,
}

impl Env {
    fn path(&self, name: &str) -> String {
        self.c.work.path().join(name).to_str().expect("utf-8").to_string()
    }

    fn ha_log(&self) -> String {
        std::fs::read_to_string(&self.ha_log).unwrap_or_default()
    }

    fn pkcs11_log(&self) -> String {
        std::fs::read_to_string(&self.pkcs11_log).unwrap_or_default()
    }

    /// The module's environment, and the askpass program that gives OpenSSH
    /// the PIN: ssh and ssh-add ask through `SSH_ASKPASS` when
    /// `SSH_ASKPASS_REQUIRE=force` and `DISPLAY` is set.
    fn envs(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("HAHSM_CONF", self.conf.clone().into()),
            ("HAHSM_PKCS11_LOG", self.pkcs11_log.clone().into()),
            ("HAHSM_HA_LOG", self.ha_log.clone().into()),
            ("SSH_ASKPASS", self.askpass.clone().into()),
            ("SSH_ASKPASS_REQUIRE", "force".into()),
            ("DISPLAY", ":0".into()),
        ]
    }

    /// Runs a program with the module's environment plus `extra`:
    /// (success, stdout, stderr).
    fn run(
        &self,
        program: &str,
        args: &[&str],
        extra: &[(&'static str, OsString)],
    ) -> (bool, String, String) {
        let mut all = self.envs();
        all.extend(extra.iter().cloned());
        let envs: Vec<(&str, &Path)> = all.iter().map(|(k, v)| (*k, Path::new(v))).collect();
        tool(program, args, &envs, LIMIT)
    }

    /// The same, panicking with its output and the module's logs when it fails.
    #[track_caller]
    fn ok(&self, program: &str, args: &[&str], extra: &[(&'static str, OsString)]) -> String {
        let (ok, out, err) = self.run(program, args, extra);
        assert!(
            ok,
            "{program} {args:?} failed\nstdout:\n{out}\nstderr:\n{err}\nmodule log:\n{}\nHA log:\n{}",
            self.pkcs11_log(),
            self.ha_log()
        );
        out
    }

    fn pkcs11_tool(&self, args: &[&str]) -> String {
        let mut full = vec![
            "--module",
            &self.module,
            "--token-label",
            GROUP,
            "--login",
            "--pin",
            PIN,
        ];
        full.extend_from_slice(args);
        // No openssl.cnf: with Debian's own (an empty openssl_init and
        // config_diagnostics = 1), pkcs11-tool 0.23's --read-object of an EC
        // public key fails in EVP_PKEY_fromdata ("cannot create EVP_PKEY",
        // EC_R_INVALID_ENCODING) after the same PKCS#11 calls and answers
        // that succeed with SoftHSM (which initializes libcrypto itself).
        self.ok("pkcs11-tool", &full, &[("OPENSSL_CONF", "/dev/null".into())])
    }
}

fn setup() -> Env {
    let c = Cluster::new(3);
    // HA only, with short deadlines so that a dead member costs little.
    let text = std::fs::read_to_string(&c.conf).unwrap();
    let text = text
        .lines()
        .map(|l| match l.split('=').next().map(str::trim) {
            Some("request_timeout_ms") => "request_timeout_ms = 1500".to_string(),
            Some("handshake_timeout_ms") => "handshake_timeout_ms = 1000".to_string(),
            Some("connect_timeout_ms") => "connect_timeout_ms = 1000".to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let conf = c.work.path().join("client/openssh.toml");
    std::fs::write(&conf, format!("ha_only = true\n{text}\n")).unwrap();
    // ssh-agent compares the module's real path with its allowlist.
    let module = std::fs::canonicalize(module_path())
        .unwrap()
        .to_str()
        .expect("utf-8")
        .to_string();
    let askpass = c.work.path().join("askpass.sh");
    write_askpass(&askpass, PIN);
    Env {
        ha_log: c.work.path().join("ha.log"),
        pkcs11_log: c.work.path().join("pkcs11.log"),
        c,
        module,
        conf,
        askpass,
    }
}

fn write_askpass(path: &Path, pin: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\necho '{pin}'\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// The key line of an OpenSSH public key ("type base64"), without comment.
fn key_line(line: &str) -> String {
    line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// Makes a key pair with pkcs11-tool through the HA slot and returns its
/// public key as pkcs11-tool exports it, in OpenSSH's form (by plain openssl
/// and `ssh-keygen -i`): "type base64".
fn make_key(env: &Env, key_type: &str, label: &str, id: &str, ssh_type: &str) -> String {
    env.pkcs11_tool(&[
        "--keypairgen",
        "--key-type",
        key_type,
        "--label",
        label,
        "--id",
        id,
    ]);
    let der = env.path(&format!("{label}.pub.der"));
    env.pkcs11_tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        id,
        "--output-file",
        &der,
    ]);
    let pem = env.path(&format!("{label}.pub.pem"));
    let r = hahsm_it::run(
        "openssl",
        &["pkey", "-pubin", "-inform", "DER", "-in", &der, "-out", &pem],
    );
    assert!(r.ok, "openssl pkey: {}", r.stderr);
    let r = hahsm_it::run("ssh-keygen", &["-i", "-m", "PKCS8", "-f", &pem]);
    assert!(r.ok, "ssh-keygen -i: {}", r.stderr);
    let line = key_line(r.stdout.trim());
    assert!(line.starts_with(ssh_type), "{label}: {line}");
    line
}

/// A private sshd on 127.0.0.1:`port`: its own host key, configuration,
/// authorized keys and pid file in `dir`, root's logins by key only.
fn start_sshd(dir: &Path, port: u16) -> Guard {
    let host_key = dir.join("ssh_host_ed25519_key");
    if !host_key.exists() {
        let r = hahsm_it::run(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", host_key.to_str().unwrap()],
        );
        assert!(r.ok, "ssh-keygen (host key): {}", r.stderr);
    }
    let conf = dir.join("sshd_config");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
             AuthorizedKeysFile {}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PermitRootLogin prohibit-password\nMaxStartups 50\nLogLevel VERBOSE\n",
            host_key.display(),
            dir.join("sshd.pid").display(),
            dir.join("authorized_keys").display(),
        ),
    )
    .unwrap();
    // The privilege-separation directory sshd insists on.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let sshd = "/usr/sbin/sshd"; // sshd re-executes itself: an absolute path.
    let t = hahsm_it::run(sshd, &["-t", "-f", conf.to_str().unwrap()]);
    assert!(t.ok, "sshd -t: {}{}", t.stdout, t.stderr);
    let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("sshd");
    let mut g = Guard { name: "sshd", child };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(g.alive(), "sshd exited: {}", sshd_log(dir));
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let mut banner = [0u8; 7];
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0" {
                return g;
            }
        }
        assert!(
            Instant::now() < deadline,
            "sshd does not answer: {}",
            sshd_log(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sshd_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
}

/// `ssh` options for a login to the private sshd: no configuration files, no
/// known hosts, public keys only.
fn ssh_args(port: &str) -> Vec<&str> {
    vec![
        "-F",
        "/dev/null",
        "-p",
        port,
        "-o",
        "BatchMode=no",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "PreferredAuthentications=publickey",
        "-o",
        "ConnectTimeout=10",
    ]
}

/// One login to the private sshd on `port` that runs `echo marker`: whether
/// it printed the marker, with ssh's stdout and stderr.
fn login(
    env: &Env,
    port: &str,
    extra_args: &[&str],
    extra_env: &[(&'static str, OsString)],
    marker: &str,
) -> (bool, String, String) {
    let mut args = ssh_args(port);
    args.extend_from_slice(extra_args);
    let command = format!("echo {marker}");
    args.extend(["root@127.0.0.1", &command]);
    let (ok, out, err) = env.run("ssh", &args, extra_env);
    (ok && out.lines().any(|l| l == marker), out, err)
}

/// `ssh-agent -D -a sock` with the module's environment (its PKCS#11
/// helper inherits it) and `allow` (`-P pattern`).
fn start_agent(env: &Env, dir: &Path, sock: &Path, allow: &[&str]) -> Guard {
    let _ = std::fs::remove_file(sock);
    let mut cmd = Command::new("ssh-agent");
    cmd.arg("-D").arg("-a").arg(sock).args(allow);
    for (k, v) in env.envs() {
        cmd.env(k, v);
    }
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("ssh-agent");
    let mut g = Guard {
        name: "ssh-agent",
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(g.alive() && Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    g
}

#[test]
fn openssh_logs_in_with_a_key_in_hahsm_through_the_ha_slot_across_a_killed_member() {
    let started = Instant::now();
    let mut env = setup();
    let dir = env.c.work.path().join("ssh");
    std::fs::create_dir_all(&dir).unwrap();

    // The user keys, made through the HA slot: EC P-256 for everything,
    // RSA-2048 for one login each way.
    let exported = make_key(&env, "EC:prime256v1", LABEL, ID, "ecdsa-sha2-nistp256 ");
    let exported_rsa = make_key(&env, "rsa:2048", RSA_LABEL, RSA_ID, "ssh-rsa ");

    // ssh-keygen -D lists it (public objects, without the PIN).
    let listed = env.ok("ssh-keygen", &["-D", &env.module], &[]);
    let lines: Vec<&str> = listed.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| key_line(l) == exported),
        "ssh-keygen -D does not list the key pkcs11-tool exports ({exported}):\n{listed}"
    );
    assert!(
        lines.iter().any(|l| key_line(l) == exported_rsa),
        "ssh-keygen -D does not list the RSA key pkcs11-tool exports ({exported_rsa}):\n{listed}"
    );
    let authorized = dir.join("authorized_keys");
    std::fs::write(&authorized, format!("{exported} {LABEL}\n")).unwrap();

    let port = hahsm_it::free_port();
    let port_s = port.to_string();
    let _sshd = start_sshd(&dir, port);
    // ssh -I: the module loaded by ssh, the PIN through askpass. Only the
    // module's key is offered: IdentityAgent=none, and IdentitiesOnly=yes
    // with the key's public half as -i (with IdentitiesOnly, OpenSSH 9.2
    // drops a token's keys that no IdentityFile names).
    let user_pub = dir.join("user.pub");
    std::fs::write(&user_pub, format!("{exported} {LABEL}\n")).unwrap();
    let user_pub = user_pub.to_str().unwrap();
    let only = ["-i", user_pub, "-o", "IdentitiesOnly=yes"];
    let direct = [&["-I", &env.module, "-o", "IdentityAgent=none"], &only[..]].concat();
    let (ok, out, err) = login(&env, &port_s, &direct, &[], "t27-direct");
    assert!(
        ok,
        "ssh -I: no login\nstdout:\n{out}\nstderr:\n{err}\nsshd:\n{}\nmodule log:\n{}",
        sshd_log(&dir),
        env.pkcs11_log()
    );
    // The same through the PKCS11Provider option.
    let provider = format!("PKCS11Provider={}", env.module);
    let by_option = [&["-o", &provider, "-o", "IdentityAgent=none"], &only[..]].concat();
    let (ok, out, err) = login(&env, &port_s, &by_option, &[], "t27-option");
    assert!(
        ok,
        "ssh -o PKCS11Provider: no login\nstdout:\n{out}\nstderr:\n{err}"
    );

    // Refusals: a wrong PIN logs nobody in; nor does the right key when the
    // server authorizes another one.
    let wrong_pin = dir.join("askpass-wrong.sh");
    write_askpass(&wrong_pin, "not-the-pin");
    let (ok, out, err) = login(
        &env,
        &port_s,
        &direct,
        &[("SSH_ASKPASS", wrong_pin.clone().into())],
        "t27-wrong-pin",
    );
    assert!(
        !ok,
        "ssh -I logged in with a wrong PIN\nstdout:\n{out}\nstderr:\n{err}"
    );
    let other = dir.join("other_key");
    let r = hahsm_it::run(
        "ssh-keygen",
        &["-q", "-t", "ecdsa", "-N", "", "-f", other.to_str().unwrap()],
    );
    assert!(r.ok, "{}", r.stderr);
    std::fs::copy(dir.join("other_key.pub"), &authorized).unwrap();
    let (ok, out, err) = login(&env, &port_s, &direct, &[], "t27-not-authorized");
    assert!(
        !ok,
        "ssh -I logged in with a key the server does not authorize\n{out}\n{err}"
    );
    std::fs::write(&authorized, format!("{exported} {LABEL}\n")).unwrap();

    // The RSA key with ssh -I: refused while only the EC key is authorized
    // (so the login below is the RSA key's), then accepted.
    let rsa_pub = dir.join("rsa.pub");
    std::fs::write(&rsa_pub, format!("{exported_rsa} {RSA_LABEL}\n")).unwrap();
    let rsa_pub = rsa_pub.to_str().unwrap();
    let rsa_only = ["-i", rsa_pub, "-o", "IdentitiesOnly=yes"];
    let rsa_direct = [&["-I", &env.module, "-o", "IdentityAgent=none"], &rsa_only[..]].concat();
    let (ok, out, err) = login(&env, &port_s, &rsa_direct, &[], "t27-rsa-refused");
    assert!(
        !ok,
        "ssh -I logged in with the RSA key, not authorized\n{out}\n{err}"
    );
    std::fs::write(
        &authorized,
        format!("{exported} {LABEL}\n{exported_rsa} {RSA_LABEL}\n"),
    )
    .unwrap();
    let (ok, out, err) = login(&env, &port_s, &rsa_direct, &[], "t27-rsa-direct");
    assert!(
        ok,
        "ssh -I with the RSA key: no login\nstdout:\n{out}\nstderr:\n{err}\nsshd:\n{}",
        sshd_log(&dir)
    );

    // ssh-agent. By default it loads PKCS#11 modules from /usr/lib* and
    // /usr/local/lib* only; -P allows the built module's path.
    let sock = dir.join("agent.sock");
    let agent_env: Vec<(&'static str, OsString)> = vec![("SSH_AUTH_SOCK", sock.clone().into())];
    {
        // Without the allowlist, the agent refuses the module.
        let _agent = start_agent(&env, &dir, &sock, &[]);
        let (ok, out, err) = env.run("ssh-add", &["-s", &env.module], &agent_env);
        assert!(
            !ok,
            "ssh-agent loaded a module outside its default allowlist\n{out}\n{err}"
        );
    }
    let _agent = start_agent(&env, &dir, &sock, &["-P", &env.module]);
    env.ok("ssh-add", &["-s", &env.module], &agent_env);
    let keys = env.ok("ssh-add", &["-L"], &agent_env);
    assert!(
        keys.lines().any(|l| key_line(l) == exported),
        "ssh-add -L does not show the key:\n{keys}"
    );
    let fingerprints = env.ok("ssh-add", &["-l"], &agent_env);
    assert!(
        fingerprints.contains("(ECDSA)") && fingerprints.contains("(RSA)"),
        "ssh-add -l: {fingerprints}"
    );
    let (ok, out, err) = login(&env, &port_s, &rsa_only, &agent_env, "t27-rsa-agent");
    assert!(
        ok,
        "ssh through the agent with the RSA key: no login\nstdout:\n{out}\nstderr:\n{err}"
    );
    let through_agent = only;
    let (ok, out, err) = login(&env, &port_s, &through_agent, &agent_env, "t27-agent");
    assert!(
        ok,
        "ssh through the agent: no login\nstdout:\n{out}\nstderr:\n{err}\nsshd:\n{}",
        sshd_log(&dir)
    );

    // 200 logins in a row; member 0 is killed after the first 50 and
    // restarted after 100. Every tenth is an `ssh -I` of its own (a new
    // process that loads the module, with its own HA log), the others go
    // through the agent, whose one loaded module lives through the fault.
    let member0 = format!("has dropped member: {}", env.c.serials[0]);
    assert_eq!(env.ha_log().matches(&member0).count(), 0, "{}", env.ha_log());
    let direct_log = dir.join("ha-direct.log");
    let direct_env: Vec<(&'static str, OsString)> = vec![("HAHSM_HA_LOG", direct_log.clone().into())];
    let mut failures = Vec::new();
    let logins_started = Instant::now();
    for i in 0..LOGINS {
        if i == 50 {
            env.c.members[0].kill9();
        }
        if i == 100 {
            env.c.members[0].spawn();
        }
        let marker = format!("t27-login-{i}");
        let (how, (ok, out, err)) = if i % 10 == 5 {
            ("ssh -I", login(&env, &port_s, &direct, &direct_env, &marker))
        } else {
            ("agent", login(&env, &port_s, &through_agent, &agent_env, &marker))
        };
        if !ok {
            failures.push(format!("login {i} ({how}): stdout {out:?} stderr {err:?}"));
        }
    }
    let took = logins_started.elapsed();
    eprintln!("t27: {LOGINS} logins in {took:?}");
    let direct_ha_log = std::fs::read_to_string(&direct_log).unwrap_or_default();
    assert!(
        failures.is_empty(),
        "{} of {LOGINS} logins failed:\n{}\nagent:\n{}\nHA log (agent):\n{}\nHA log (ssh -I):\n{direct_ha_log}\nmodule log (tail):\n{}",
        failures.len(),
        failures.join("\n"),
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default(),
        env.ha_log(),
        tail(&env.pkcs11_log(), 40)
    );
    assert!(
        env.ha_log().contains(&member0),
        "the agent's module should have dropped the killed member 0:\n{}",
        env.ha_log()
    );
    assert!(
        direct_ha_log.contains(&member0),
        "the ssh -I logins while member 0 was dead should have dropped it:\n{direct_ha_log}"
    );
    // The agent's module takes the restarted member 0 back (its recovery
    // attempts back off; a login a second gives it requests meanwhile).
    let recovered = format!("succeeded for member: {}", env.c.serials[0]);
    for _ in 0..30 {
        if env.ha_log().contains(&recovered) {
            break;
        }
        let _ = login(&env, &port_s, &through_agent, &agent_env, "t27-wait");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        env.ha_log().contains(&recovered),
        "the agent's module should have recovered the restarted member 0:\n{}",
        env.ha_log()
    );
    eprintln!("t27: HA log of the agent's module:\n{}", env.ha_log());
    assert!(
        !env.pkcs11_log().contains(PIN),
        "the PIN reached the module's log"
    );
    eprintln!("t27: whole test in {:?}", started.elapsed());
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
