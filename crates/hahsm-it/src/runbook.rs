//! A document's commands, as a test runs them: the fenced blocks of a
//! Markdown page (docs/deploy.md) that say where they run.
//!
//! - ```` ```sh host=NAME ```` (or `host=a,b`, or `host=each-member`): a shell
//!   script for those hosts, in that order;
//! - ```` ```text copy ````: lines `HOST:/path -> HOST:/path`, files an operator
//!   carries between hosts.
//!
//! Every `sh` block must say where it runs, so that no command of the page is
//! left out of the test.

/// The members that `host=each-member` stands for, in order.
pub const EACH_MEMBER: [&str; 3] = ["hsmone", "hsmtwo", "hsmthree"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A script and the hosts it runs on, one after the other.
    Run {
        hosts: Vec<String>,
        script: String,
        line: usize,
    },
    /// Files carried from one host to another.
    Copy { files: Vec<(Place, Place)>, line: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub host: String,
    pub path: String,
}

fn place(text: &str) -> Result<Place, String> {
    let (host, path) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("'{text}' is not HOST:/path"))?;
    if host.is_empty() || !path.starts_with('/') {
        return Err(format!("'{text}' is not HOST:/absolute/path"));
    }
    Ok(Place {
        host: host.to_string(),
        path: path.to_string(),
    })
}

/// The steps of a page, in order; an `sh` block without a host is an error.
pub fn steps(markdown: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let info = info.trim();
        let mut body = String::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                closed = true;
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        if !closed {
            return Err(format!("line {}: a code block is not closed", n + 1));
        }
        let mut words = info.split_whitespace();
        match words.next() {
            Some("sh") | Some("bash") => {
                let host = words.find_map(|w| w.strip_prefix("host="));
                let Some(host) = host else {
                    return Err(format!(
                        "line {}: a shell block without host=…: every command must be run by the test",
                        n + 1
                    ));
                };
                let hosts = if host == "each-member" {
                    EACH_MEMBER.iter().map(|h| h.to_string()).collect()
                } else {
                    host.split(',').map(str::to_string).collect()
                };
                steps.push(Step::Run {
                    hosts,
                    script: body,
                    line: n + 1,
                });
            }
            Some("text") if words.any(|w| w == "copy") => {
                let mut files = Vec::new();
                for l in body.lines().filter(|l| !l.trim().is_empty()) {
                    let (from, to) = l
                        .split_once("->")
                        .ok_or_else(|| format!("line {}: '{l}' is not FROM -> TO", n + 1))?;
                    files.push((place(from)?, place(to)?));
                }
                steps.push(Step::Copy { files, line: n + 1 });
            }
            _ => {}
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_steps_in_order() {
        let page =
            "intro\n```sh host=hsmone\necho one\n```\ntext\n```text copy\nhsmone:/a -> app:/b/c\n```\n\
                    ```sh host=each-member\necho all\n```\n```sh host=hsmtwo,hsmthree\necho two\n```\n\
                    ```toml\nnot = \"run\"\n```\n";
        let s = steps(page).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(
            s[0],
            Step::Run {
                hosts: vec!["hsmone".into()],
                script: "echo one\n".into(),
                line: 2
            }
        );
        assert_eq!(
            s[1],
            Step::Copy {
                files: vec![(
                    Place {
                        host: "hsmone".into(),
                        path: "/a".into()
                    },
                    Place {
                        host: "app".into(),
                        path: "/b/c".into()
                    }
                )],
                line: 6
            }
        );
        let Step::Run { hosts, .. } = &s[2] else {
            panic!("{:?}", s[2])
        };
        assert_eq!(hosts, &["hsmone", "hsmtwo", "hsmthree"]);
        let Step::Run { hosts, .. } = &s[3] else {
            panic!("{:?}", s[3])
        };
        assert_eq!(hosts, &["hsmtwo", "hsmthree"]);
    }

    #[test]
    fn a_shell_block_without_a_host_or_a_bad_copy_is_refused() {
        assert!(steps("```sh\nrm -rf /\n```\n")
            .unwrap_err()
            .contains("without host="));
        assert!(steps("```text copy\nhsmone:/a app:/b\n```\n").is_err());
        assert!(steps("```text copy\nhsmone:a -> app:/b\n```\n").is_err());
        assert!(steps("```sh host=a\necho\n").unwrap_err().contains("not closed"));
    }
}
