//! `/metrics` content negotiation: OpenMetrics for scrapers that ask for it in `Accept`,
//! the Prometheus text format 0.0.4 for everyone else (curl, older scrapers, promtool).
//!
//! The registry writes OpenMetrics; the text format differs in ways its parsers reject: a
//! counter's HELP and TYPE name the sample (`x_total`), not the family (`x`); there is no
//! `# UNIT` or `# EOF`; `unknown` is `untyped`; HELP escapes only `\` and line feeds.

/// OpenMetrics 1.0.0, as prometheus-client writes it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// True when `accept` asks for OpenMetrics at least as much as for anything else it lists
/// (Prometheus sends `application/openmetrics-text;…;q=0.5,…,text/plain;version=0.0.4;q=0.3`).
/// No header, `*/*`, `text/plain`: the text format.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let (mut om, mut other) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if media == "application/openmetrics-text" {
            om = om.max(q);
        } else if !media.is_empty() {
            other = other.max(q);
        }
    }
    om > 0.0 && om >= other
}

/// The `/metrics` answer for `accept`, from the registry's OpenMetrics text.
pub fn respond(
    accept: Option<&str>,
    openmetrics: String,
) -> ([(&'static str, &'static str); 1], String) {
    if wants_openmetrics(accept) {
        ([("content-type", OPENMETRICS)], openmetrics)
    } else {
        (
            [("content-type", PROMETHEUS_TEXT)],
            to_prometheus_text(&openmetrics),
        )
    }
}

/// The Prometheus text format 0.0.4 for the OpenMetrics text `om`.
pub fn to_prometheus_text(om: &str) -> String {
    use std::collections::BTreeSet;
    let counters: BTreeSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = sample_name(name, &counters);
            out.push_str(&format!("# HELP {name} {}\n", text_help(help)));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let ty = if ty == "unknown" { "untyped" } else { ty };
            out.push_str(&format!("# TYPE {} {ty}\n", sample_name(name, &counters)));
            continue;
        }
        // A counter's creation time has no place in the text format.
        let metric = line.split(['{', ' ']).next().unwrap_or("");
        if let Some(base) = metric.strip_suffix("_created")
            && counters.contains(base)
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn sample_name(family: &str, counters: &std::collections::BTreeSet<&str>) -> String {
    if counters.contains(family) && !family.ends_with("_total") {
        format!("{family}_total")
    } else {
        family.to_string()
    }
}

/// OpenMetrics HELP escapes `\`, `"` and line feeds; the text format only `\` and line feeds.
fn text_help(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut chars = om.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push_str("\\n"),
                Some('\\') => out.push_str("\\\\"),
                Some('"') => out.push('"'),
                Some(other) => {
                    out.push_str("\\\\");
                    out.push(other);
                }
                None => out.push_str("\\\\"),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_decides_the_format() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        // What Prometheus 2.x sends.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0.1, text/plain;q=0.9"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
    }

    #[test]
    fn counters_are_named_by_their_samples_and_openmetrics_lines_go() {
        let om = "# HELP a_things Things \\\"seen\\\".\n# TYPE a_things counter\na_things_total{x=\"1\"} 3\na_things_created 1.5\n# HELP b_level A level.\n# TYPE b_level gauge\n# UNIT b_level bytes\nb_level 2\n# TYPE c unknown\nc 1\n# EOF\n";
        let t = to_prometheus_text(om);
        assert_eq!(
            t,
            "# HELP a_things_total Things \"seen\".\n# TYPE a_things_total counter\na_things_total{x=\"1\"} 3\n# HELP b_level A level.\n# TYPE b_level gauge\nb_level 2\n# TYPE c untyped\nc 1\n"
        );
    }
}
