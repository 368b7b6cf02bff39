//! resolv.conf parsing for the DNS part of the IPAM result (as host-local's `resolvConf`).

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// The DNS settings of `cfg.resolv_conf`, if one is configured.
pub fn load(cfg: &crate::IpamConfig) -> crate::Result<Option<ResolvConf>> {
    let Some(path) = &cfg.resolv_conf else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| crate::IpamError::io("read resolvConf", path, e))?;
    Ok(Some(parse(&text)))
}

/// Lenient parse: unknown lines and comments are skipped; the last `domain` wins.
pub fn parse(text: &str) -> ResolvConf {
    let mut rc = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => rc.nameservers.extend(words.next().map(str::to_string)),
            Some("domain") => rc.domain = words.next().map(str::to_string),
            Some("search") => rc.search = words.map(str::to_string).collect(),
            Some("options") => rc.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_lines() {
        let rc = parse("# generated\nnameserver 10.96.0.10\nnameserver fd00::a ; x\nsearch a.svc b.local\ndomain cluster.local\noptions ndots:5 edns0\nbogus\n");
        assert_eq!(rc.nameservers, vec!["10.96.0.10", "fd00::a"]);
        assert_eq!(rc.search, vec!["a.svc", "b.local"]);
        assert_eq!(rc.domain.as_deref(), Some("cluster.local"));
        assert_eq!(rc.options, vec!["ndots:5", "edns0"]);
        assert_eq!(parse(""), ResolvConf::default());
    }
}
