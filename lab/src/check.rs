//! The reachability matrix: every pod and node probes every pod (TCP and UDP on the pod's first port); the
//! result is compared with what the lab's state says should happen.

use std::time::Duration;

use crate::echo::{self, Proto};
use crate::error::Result;
use crate::lab::Endpoint;
use crate::names;
use crate::nsexec;
use crate::plan::PodPlan;
use crate::state::LabState;

/// What the lab expects for one probe. For now everything is reachable; NetworkPolicy plugs in here later.
pub fn expected(_st: &LabState, _from: &Endpoint, _to: &PodPlan, _port: u16, _proto: Proto) -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub from: String,
    pub to: String,
    pub proto: Proto,
    pub expected: bool,
    pub reached: bool,
    /// The name that answered (must be the target's) or the error.
    pub detail: String,
}

#[derive(Debug, Clone, Default)]
pub struct Matrix {
    pub sources: Vec<String>,
    pub targets: Vec<String>,
    pub cells: Vec<Cell>,
}

impl Matrix {
    pub fn ok(&self) -> bool {
        self.cells.iter().all(|c| c.expected == c.reached)
    }

    pub fn render(&self) -> String {
        let w = self.targets.iter().map(String::len).max().unwrap_or(4).max(7);
        let sw = self.sources.iter().map(String::len).max().unwrap_or(4).max(9);
        let mut s = format!("{:<sw$}", "FROM \\ TO");
        for t in &self.targets {
            s.push_str(&format!(" {t:<w$}"));
        }
        s.push('\n');
        for src in &self.sources {
            s.push_str(&format!("{src:<sw$}"));
            for t in &self.targets {
                let cells: Vec<&Cell> = self.cells.iter().filter(|c| &c.from == src && &c.to == t).collect();
                s.push_str(&format!(" {:<w$}", cell_text(&cells)));
            }
            s.push('\n');
        }
        let bad: Vec<&Cell> = self.cells.iter().filter(|c| c.expected != c.reached).collect();
        if bad.is_empty() {
            s.push_str("matrix matches expectations\n");
        } else {
            s.push_str(&format!("{} probe(s) differ from expectations:\n", bad.len()));
            for c in bad {
                s.push_str(&format!(
                    "  {} -> {} {}: expected {}, got {} ({})\n",
                    c.from,
                    c.to,
                    c.proto,
                    if c.expected { "reachable" } else { "blocked" },
                    if c.reached { "reachable" } else { "blocked" },
                    c.detail
                ));
            }
        }
        s
    }
}

/// "ok" both protocols reached as expected, "blocked" both blocked as expected; a `!` marks a mismatch.
fn cell_text(cells: &[&Cell]) -> String {
    if cells.is_empty() {
        return "-".into();
    }
    let mismatch = cells.iter().any(|c| c.expected != c.reached);
    let reached: Vec<String> = cells.iter().filter(|c| c.reached).map(|c| c.proto.to_string()).collect();
    let body = if reached.len() == cells.len() {
        "ok".to_string()
    } else if reached.is_empty() {
        "blocked".to_string()
    } else {
        format!("{} only", reached.join("+"))
    };
    if mismatch {
        format!("!{body}")
    } else {
        body
    }
}

pub fn sources(st: &LabState) -> Vec<Endpoint> {
    let mut v: Vec<Endpoint> = st
        .plan
        .pods
        .iter()
        .map(|p| Endpoint { label: p.name.clone(), netns: p.netns.clone(), is_node: false })
        .collect();
    v.extend(st.plan.nodes.iter().map(|n| Endpoint {
        label: format!("node/{}", n.name),
        netns: n.netns.clone(),
        is_node: true,
    }));
    v
}

/// Probes everything, one thread per source (each enters its netns once).
pub fn run(st: &LabState, timeout: Duration) -> Result<Matrix> {
    let srcs = sources(st);
    let results: Vec<Result<Vec<Cell>>> = std::thread::scope(|s| {
        let handles: Vec<_> = srcs.iter().map(|src| s.spawn(move || probe_all_from(st, src, timeout))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(crate::error::LabError::Probe("probe thread panicked".into()))))
            .collect()
    });
    let mut m = Matrix {
        sources: srcs.iter().map(|s| s.label.clone()).collect(),
        targets: st.plan.pods.iter().map(|p| p.name.clone()).collect(),
        cells: Vec::new(),
    };
    for r in results {
        m.cells.extend(r?);
    }
    Ok(m)
}

fn probe_all_from(st: &LabState, src: &Endpoint, timeout: Duration) -> Result<Vec<Cell>> {
    nsexec::run_in(&names::netns_path(&src.netns), || {
        let mut cells = Vec::new();
        for to in &st.plan.pods {
            let port = to.ports[0].port();
            for proto in [Proto::Tcp, Proto::Udp] {
                let expected = expected(st, src, to, port, proto);
                let (reached, detail) = match st.pod_ip(to) {
                    None => (false, "pod has no IP".to_string()),
                    Some(ip) => match echo::probe(ip, port, proto, timeout) {
                        // An answer from another pod is not reaching the target.
                        Ok(name) => (name == to.name, format!("answered by {name}")),
                        Err(e) => (false, e.to_string()),
                    },
                };
                cells.push(Cell { from: src.label.clone(), to: to.name.clone(), proto, expected, reached, detail });
            }
        }
        cells
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(from: &str, to: &str, proto: Proto, expected: bool, reached: bool) -> Cell {
        Cell { from: from.into(), to: to.into(), proto, expected, reached, detail: "x".into() }
    }

    #[test]
    fn matrix_ok_and_render() {
        let mut m = Matrix {
            sources: vec!["a".into(), "node/n1".into()],
            targets: vec!["a".into()],
            cells: vec![
                cell("a", "a", Proto::Tcp, true, true),
                cell("a", "a", Proto::Udp, true, true),
                cell("node/n1", "a", Proto::Tcp, true, true),
                cell("node/n1", "a", Proto::Udp, true, false),
            ],
        };
        assert!(!m.ok());
        let r = m.render();
        assert!(r.contains("!tcp only"), "{r}");
        assert!(r.contains("1 probe(s) differ"), "{r}");
        m.cells[3].reached = true;
        assert!(m.ok());
        assert!(m.render().contains("matrix matches"));
        // Blocked as expected is fine.
        m.cells[0].expected = false;
        m.cells[0].reached = false;
        m.cells[1].expected = false;
        m.cells[1].reached = false;
        assert!(m.ok());
        assert!(m.render().contains("blocked"));
    }

    #[test]
    fn default_expectation_is_reachable() {
        let plan = crate::plan::plan(&crate::topology::Topology::default_topology(), None).unwrap();
        let st = LabState::new(plan, "/x".into(), None);
        let srcs = sources(&st);
        assert_eq!(srcs.len(), 6);
        assert!(srcs.iter().all(|s| expected(&st, s, &st.plan.pods[0], 8080, Proto::Tcp)));
    }
}
