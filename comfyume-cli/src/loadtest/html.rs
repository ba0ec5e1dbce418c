//! The load test's page: the summary and charts of queue depth, waits and the server's memory over
//! time, as inline SVG in one HTML file (nothing fetched from elsewhere; opens offline).

use std::fmt::Write as _;

use super::probe::Sample;
use super::stats::{JobRecord, depth_over_time};

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// A step line (the value holds until the next point).
    Step,
    /// A polyline.
    Line,
    /// One dot per point.
    Dots,
}

struct Series {
    name: &'static str,
    color: &'static str,
    shape: Shape,
    points: Vec<(f64, f64)>,
}

const W: f64 = 900.0;
const H: f64 = 260.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 30.0;
const TOP: f64 = 10.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis.
fn nice(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_max) = all.fold((0f64, 0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let (x_max, y_max) = (nice(x_max), nice(y_max));
    let (plot_w, plot_h) = (W - LEFT - 10.0, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + x / x_max * plot_w;
    let sy = |y: f64| TOP + plot_h - y / y_max * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<h2>{}</h2>\n<svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\">\n",
        escape(title),
        escape(title)
    );
    // Axes and grid.
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" class=\"grid\"/><text x=\"{}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>",
            W - 10.0,
            LEFT - 4.0,
            sy(y) + 4.0,
            trim(y),
            py = sy(y)
        );
        let x = x_max * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
            sx(x),
            H - BOTTOM + 14.0,
            trim(x)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" class=\"label\" text-anchor=\"middle\">{}</text>\
         <text x=\"12\" y=\"{}\" class=\"label\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{}</text>",
        LEFT + plot_w / 2.0,
        H - 2.0,
        escape(x_label),
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    for s in series {
        match s.shape {
            Shape::Dots => {
                for &(x, y) in &s.points {
                    let _ = write!(
                        svg,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.6\" fill=\"{}\"/>",
                        sx(x),
                        sy(y),
                        s.color
                    );
                }
                svg.push('\n');
            }
            Shape::Line | Shape::Step => {
                let mut path = String::new();
                let mut last_y = None;
                for &(x, y) in &s.points {
                    if s.shape == Shape::Step
                        && let Some(ly) = last_y
                    {
                        let _ = write!(path, "{:.1},{:.1} ", sx(x), sy(ly));
                    }
                    let _ = write!(path, "{:.1},{:.1} ", sx(x), sy(y));
                    last_y = Some(y);
                }
                let _ = writeln!(
                    svg,
                    "<polyline points=\"{path}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>",
                    s.color
                );
            }
        }
    }
    // Legend.
    for (i, s) in series.iter().enumerate() {
        let x = LEFT + 10.0 + 180.0 * i as f64;
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" class=\"tick\">{}</text>",
            TOP + 2.0,
            s.color,
            x + 14.0,
            TOP + 11.0,
            escape(s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn trim(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// At most `max` points, evenly picked, so a page of 10 000 jobs stays light.
fn thin<T: Copy>(points: &[T], max: usize) -> Vec<T> {
    if points.len() <= max {
        return points.to_vec();
    }
    let step = points.len() as f64 / max as f64;
    (0..max).map(|i| points[(i as f64 * step) as usize]).collect()
}

/// The whole page: `summary` (preformatted text) and the charts.
pub fn page(summary: &str, jobs: &[JobRecord], samples: &[Sample]) -> String {
    let t0 = jobs
        .iter()
        .map(|j| j.submitted_ms)
        .chain(samples.iter().map(|s| s.at_ms))
        .min()
        .unwrap_or(0);
    let secs = |ms: u64| ms.saturating_sub(t0) as f64 / 1000.0;
    let depth: Vec<(f64, f64)> = depth_over_time(jobs)
        .into_iter()
        .map(|(t, d)| (secs(t), d as f64))
        .collect();
    let sampled_depth: Vec<(f64, f64)> = samples.iter().map(|s| (secs(s.at_ms), s.queue_depth)).collect();
    let running: Vec<(f64, f64)> = samples.iter().map(|s| (secs(s.at_ms), s.running)).collect();
    let mut waits: Vec<(f64, f64)> = jobs
        .iter()
        .filter_map(|j| Some((secs(j.started_ms?), j.wait_ms()? as f64 / 1000.0)))
        .collect();
    waits.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut e2e: Vec<(f64, f64)> = jobs
        .iter()
        .filter_map(|j| Some((secs(j.seen_end_ms?), j.end_to_end_ms()? as f64 / 1000.0)))
        .collect();
    e2e.sort_by(|a, b| a.0.total_cmp(&b.0));
    let rss: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| Some((secs(s.at_ms), s.rss_bytes? / 1_048_576.0)))
        .collect();
    let sockets: Vec<(f64, f64)> = samples.iter().map(|s| (secs(s.at_ms), s.websockets)).collect();
    let mut body = String::new();
    body.push_str(&chart(
        "Queue depth",
        "seconds since the first submit",
        "jobs",
        &[
            Series {
                name: "waiting (from job events)",
                color: "#1f77b4",
                shape: Shape::Step,
                points: thin(&depth, 4000),
            },
            Series {
                name: "waiting (/metrics)",
                color: "#ff7f0e",
                shape: Shape::Line,
                points: sampled_depth,
            },
            Series {
                name: "running (/metrics)",
                color: "#2ca02c",
                shape: Shape::Line,
                points: running,
            },
        ],
    ));
    body.push_str(&chart(
        "Waits",
        "seconds since the first submit",
        "seconds",
        &[
            Series {
                name: "queue wait, at the job's start",
                color: "#1f77b4",
                shape: Shape::Dots,
                points: thin(&waits, 4000),
            },
            Series {
                name: "submit to end, at its end",
                color: "#d62728",
                shape: Shape::Dots,
                points: thin(&e2e, 4000),
            },
        ],
    ));
    if !rss.is_empty() {
        body.push_str(&chart(
            "Server resident memory",
            "seconds since the first submit",
            "MiB",
            &[Series {
                name: "RSS (/metrics)",
                color: "#9467bd",
                shape: Shape::Line,
                points: rss,
            }],
        ));
    }
    body.push_str(&chart(
        "Event streams open",
        "seconds since the first submit",
        "WebSockets",
        &[Series {
            name: "event streams (/metrics)",
            color: "#8c564b",
            shape: Shape::Line,
            points: sockets,
        }],
    ));
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>comfyume load test</title>\n\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}pre{{background:#f6f6f6;padding:1em;\
         overflow-x:auto}}.grid{{stroke:#ddd}}.tick{{font-size:11px;fill:#555}}.label{{font-size:12px;fill:#333}}\
         </style></head>\n<body><h1>comfyume load test</h1>\n<pre>{}</pre>\n{body}</body></html>\n",
        escape(summary)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_plots_every_job() {
        let jobs: Vec<JobRecord> = (0..3u64)
            .map(|i| JobRecord {
                id: format!("j{i}"),
                submitted_ms: 1000,
                created_ms: Some(1000),
                started_ms: Some(1000 + 100 * i),
                ended_ms: Some(1100 + 100 * i),
                seen_end_ms: Some(1101 + 100 * i),
                state: Some("succeeded".into()),
                ..JobRecord::default()
            })
            .collect();
        let samples = [Sample {
            at_ms: 1050,
            queue_depth: 2.0,
            rss_bytes: Some(8.0 * 1_048_576.0),
            ..Sample::default()
        }];
        let html = page("0 lost <ok>", &jobs, &samples);
        assert!(html.contains("0 lost &lt;ok&gt;"));
        assert_eq!(html.matches("<svg").count(), 4);
        // Three wait dots and three end-to-end dots.
        assert_eq!(html.matches("<circle").count(), 6);
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "nothing fetched"
        );
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(0.3), 0.5);
    }
}
