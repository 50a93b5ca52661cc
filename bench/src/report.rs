//! The report: a markdown table per scenario, the machine and versions, and an SVG plot of latency against
//! concurrency.

use std::fmt::Write;

pub struct Section {
    pub title: String,
    pub notes: Vec<String>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Section {
    pub fn new(title: &str, header: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            notes: Vec::new(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// One line of the plot: (concurrency, p50 ms) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

pub fn markdown(title: &str, preamble: &[String], sections: &[Section]) -> String {
    let mut out = format!("# {title}\n\n");
    for p in preamble {
        let _ = writeln!(out, "{p}");
    }
    for s in sections {
        let _ = write!(out, "\n## {}\n\n", s.title);
        for n in &s.notes {
            let _ = writeln!(out, "{n}\n");
        }
        if s.header.is_empty() {
            continue;
        }
        let _ = writeln!(out, "| {} |", s.header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(s.header.len()));
        for r in &s.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
    }
    out
}

/// Latency (log scale) against concurrency (log2 scale), one polyline per series.
pub fn svg(title: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 440.0, 70.0, 220.0, 40.0, 50.0);
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| *x > 0.0 && *y > 0.0 && y.is_finite())
        .collect();
    let (xmin, xmax) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| {
        (a.min(*x), b.max(*x))
    });
    let (ymin, ymax) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| {
        (a.min(*y), b.max(*y))
    });
    let (lx0, lx1) = (xmin.max(1.0).log2(), xmax.max(2.0).log2());
    let (ly0, ly1) = (
        (ymin.max(0.01) / 1.5).log10(),
        (ymax.max(0.1) * 1.5).log10(),
    );
    let px = |x: f64| left + (x.log2() - lx0) / (lx1 - lx0).max(1e-9) * (w - left - right);
    let py = |y: f64| h - bottom - (y.log10() - ly0) / (ly1 - ly0).max(1e-9) * (h - top - bottom);
    let colours = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">concurrent clients</text>
<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">p50 latency (ms, log)</text>
"#,
        (w - right + left) / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (w - right + left) / 2.0,
        h - 12.0,
        (h - bottom + top) / 2.0,
        (h - bottom + top) / 2.0,
    );
    let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{x}</text>"#,
            px(x),
            h - bottom + 16.0
        );
    }
    let mut tick = 10f64.powf(ly0.floor());
    while tick.log10() <= ly1 {
        if tick.log10() >= ly0 {
            let _ = writeln!(
                out,
                r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{tick}</text>"##,
                w - right,
                left - 6.0,
                py(tick) + 4.0,
                y = py(tick)
            );
        }
        tick *= 10.0;
    }
    for (i, s) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| *x > 0.0 && *y > 0.0 && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for p in &path {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(out, r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"#);
        }
        let ly = top + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            out,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            w - right + 12.0,
            w - right + 32.0,
            w - right + 38.0,
            ly + 4.0,
            s.label
        );
    }
    out.push_str("</svg>\n");
    out
}
