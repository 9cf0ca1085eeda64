//! A dependency-free SVG chart of a series of runs: server CPU per forwarded packet (top) and
//! loss (bottom) against the subscriber count, one line per target. Text is plain SVG `<text>`
//! (rendered with the viewer's fonts), so nothing is needed to draw it.

use std::fmt::Write;

/// One line of the chart: a target's runs.
pub struct Series<'a> {
    pub name: &'a str,
    /// (subscribers, CPU µs per forwarded packet, loss %).
    pub points: Vec<(f64, Option<f64>, f64)>,
}

const WIDTH: f64 = 760.0;
const PANEL: f64 = 230.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 62.0;
const GAP: f64 = 60.0;
const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

/// "Nice" axis maximum and tick step for values up to `max`.
fn axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    ((max / step).ceil() * step, step)
}

fn label(v: f64) -> String {
    if (v == v.trunc() && v.abs() < 1e6) || v.abs() >= 10.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Render the chart; `title` goes on top.
pub fn svg(title: &str, series: &[Series]) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let height = TOP + 2.0 * PANEL + GAP + 50.0;
    let x_max_raw = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let (x_max, x_step) = axis(x_max_raw);
    let cpu_max = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|p| p.1))
        .fold(0.0, f64::max);
    let loss_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.2))
        .fold(0.0, f64::max)
        .max(1.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let panels: [(&str, f64, usize); 2] = [
        ("server CPU per forwarded packet (µs)", cpu_max, 1),
        ("loss (%)", loss_max, 2),
    ];
    for (p, (name, max, which)) in panels.iter().enumerate() {
        let top = TOP + p as f64 * (PANEL + GAP);
        let (y_max, y_step) = axis(*max);
        let x = |v: f64| LEFT + v / x_max * plot_w;
        let y = |v: f64| top + PANEL - v / y_max * PANEL;
        // Frame, grid and ticks.
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#444"/>"##
        );
        let mut t = 0.0;
        while t <= y_max + 1e-9 {
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
                y(t),
                LEFT + plot_w,
                LEFT - 6.0,
                y(t) + 4.0,
                label(t)
            );
            t += y_step;
        }
        let mut t = 0.0;
        while t <= x_max + 1e-9 {
            let _ = writeln!(
                out,
                r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#ddd"/><text x="{0}" y="{3}" text-anchor="middle">{4}</text>"##,
                x(t),
                top,
                top + PANEL,
                top + PANEL + 16.0,
                label(t)
            );
            t += x_step;
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
            LEFT + plot_w / 2.0,
            top - 8.0,
            escape(name)
        );
        if *which == 2 {
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" text-anchor="middle">subscribers</text>"#,
                LEFT + plot_w / 2.0,
                top + PANEL + 34.0
            );
        }
        // Lines and points.
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut points: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter_map(|p| {
                    let v = if *which == 1 { p.1? } else { p.2 };
                    Some((x(p.0), y(v)))
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            if points.len() > 1 {
                let path: Vec<String> = points
                    .iter()
                    .map(|(px, py)| format!("{px:.1},{py:.1}"))
                    .collect();
                let _ = writeln!(
                    out,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                    path.join(" ")
                );
            }
            for (px, py) in &points {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{px:.1}" cy="{py:.1}" r="3.5" fill="{color}"/>"#
                );
            }
            if p == 0 {
                let ly = TOP + 20.0 + i as f64 * 20.0;
                let lx = LEFT + plot_w + 16.0;
                let _ = writeln!(
                    out,
                    r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                    lx + 22.0,
                    lx + 28.0,
                    ly + 4.0,
                    escape(s.name)
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_is_nice() {
        assert_eq!(axis(8.6), (10.0, 2.0));
        assert_eq!(axis(0.42), (0.5, 0.1));
        assert_eq!(axis(1300.0), (1500.0, 500.0));
        assert_eq!(axis(0.0), (1.0, 0.2));
    }

    #[test]
    fn chart_has_both_panels_and_every_point() {
        let svg = svg(
            "livestream <test>",
            &[
                Series {
                    name: "sfu",
                    points: vec![(10.0, Some(4.0), 0.0), (20.0, Some(3.5), 0.1)],
                },
                Series {
                    name: "janus",
                    points: vec![(10.0, Some(9.0), 0.2), (20.0, None, 0.3)],
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("livestream &lt;test&gt;"));
        assert_eq!(svg.matches("<circle").count(), 7);
        assert_eq!(svg.matches("<polyline").count(), 3);
    }
}
