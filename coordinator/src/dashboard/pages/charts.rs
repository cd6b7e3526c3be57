//! The overview's usage charts: SVG line charts the server draws with plotters, one image per
//! chart (`GET /dashboard/t/{tenant}/charts/{chart}`). Daily figures come from the census (its
//! points and stored bytes, and each day's requests and searches) with today's requests and
//! searches so far from the usage counters (flushed every minute); hourly figures (requests,
//! searches, upserted points, the last 48 hours) from `usage_hours`, flushed every minute too. The images carry only dates and numbers the server formats.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::{Value, context};
use plotters::prelude::*;

use super::super::tenant::TenantAuth;
use crate::api::Service;
use crate::api::error::ApiError;
use crate::store::census::{day_number, day_of};

/// Days the daily charts show, today included.
pub(super) const DAYS: u64 = 30;

const DAY_MS: u64 = 86_400_000;

/// A chart: its id in the URL, its caption, and whether it is daily.
struct Chart {
    id: &'static str,
    title: &'static str,
}

const DAILY: &[Chart] = &[
    Chart {
        id: "daily-requests",
        title: "Requests per day",
    },
    Chart {
        id: "daily-searches",
        title: "Searches per day",
    },
    Chart {
        id: "daily-points",
        title: "Points stored (census)",
    },
    Chart {
        id: "daily-bytes",
        title: "Bytes stored (census)",
    },
];

const HOURLY: &[Chart] = &[
    Chart {
        id: "hourly-requests",
        title: "Requests per hour",
    },
    Chart {
        id: "hourly-searches",
        title: "Searches per hour",
    },
    Chart {
        id: "hourly-upserted",
        title: "Points upserted per hour",
    },
];

/// Hours the hourly charts show, the current one included.
pub(super) const HOURS: u64 = 48;

const HOUR_MS: u64 = 3_600_000;

fn listed(charts: &[Chart]) -> Vec<Value> {
    charts
        .iter()
        .map(|c| context! { id => c.id, title => c.title })
        .collect()
}

/// The daily charts, for the overview's template.
pub(super) fn daily_charts() -> Vec<Value> {
    listed(DAILY)
}

/// The hourly charts, for the overview's template.
pub(super) fn hourly_charts() -> Vec<Value> {
    listed(HOURLY)
}

/// One series: a label and a value (absent where it is not known) per step.
struct Series {
    labels: Vec<String>,
    values: Vec<Option<f64>>,
}

/// `GET /dashboard/t/{tenant}/charts/{chart}`.
pub(in super::super) async fn chart(
    State(s): State<Arc<Service>>,
    auth: TenantAuth,
    Path((_, chart)): Path<(String, String)>,
) -> Response {
    let now = auth.now_ms;
    let tenant = auth.tenant.clone();
    let series = crate::api::off_runtime(|| match chart.as_str() {
        "daily-requests" | "daily-searches" | "daily-points" | "daily-bytes" => {
            daily(&s, &tenant, &chart, now)
        }
        "hourly-requests" | "hourly-searches" | "hourly-upserted" => {
            hourly(&s, &tenant, &chart, now)
        }
        _ => Err(ApiError::new(
            crate::api::error::Code::NotFound,
            format!("no chart is called {chart:?}"),
        )),
    });
    let svg = series.and_then(|series| {
        draw(&series).map_err(|e| ApiError::internal(format!("drawing a chart: {e}")))
    });
    match svg {
        Ok(svg) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CACHE_CONTROL, "no-store"),
                // Nothing in the image may load or run anything.
                (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
            ],
            svg,
        )
            .into_response(),
        Err(err) => err.into_response(),
    }
}

/// The last [`DAYS`] days of `metric` for `tenant`, ending today (by `now`).
fn daily(s: &Service, tenant: &str, chart: &str, now: u64) -> Result<Series, ApiError> {
    let today = day_of(now);
    let last = day_number(&today).unwrap_or(0);
    let first = last.saturating_sub(DAYS - 1);
    let rows = s
        .store
        .census((&day_of(first * DAY_MS), &today), Some(tenant), None, 1000)?;
    let mut labels = Vec::new();
    let mut values = Vec::new();
    for n in first..=last {
        let day = day_of(n * DAY_MS);
        let row = rows.iter().find(|r| r.day == day);
        let value = match (chart, row) {
            ("daily-requests", Some(r)) => Some(r.requests as f64),
            ("daily-searches", Some(r)) => Some(r.searches as f64),
            ("daily-points", Some(r)) => r.points.map(|p| p as f64),
            ("daily-bytes", Some(r)) => r.bytes_hot.map(|b| b as f64),
            // A day the census has not taken yet (today): its counts so far.
            ("daily-requests" | "daily-searches", None) => {
                let (requests, searches) = s.store.usage_of(tenant, &day)?;
                Some(if chart == "daily-requests" {
                    requests as f64
                } else {
                    searches as f64
                })
            }
            _ => None,
        };
        labels.push(day[5..].to_owned());
        values.push(value);
    }
    Ok(Series { labels, values })
}

/// The last [`HOURS`] hours of `chart` for `tenant`, ending with the current hour (counts are
/// flushed every minute): an hour without usage is 0.
fn hourly(s: &Service, tenant: &str, chart: &str, now: u64) -> Result<Series, ApiError> {
    let last = now / HOUR_MS;
    let first = last.saturating_sub(HOURS - 1);
    let rows = s.store.usage_hours(tenant, first, last)?;
    let mut labels = Vec::new();
    let mut values = Vec::new();
    for u in crate::store::billing::every_hour(&rows, first, last) {
        let hour = u.hour;
        let value = match chart {
            "hourly-requests" => u.requests,
            "hourly-searches" => u.searches,
            _ => u.upserted,
        };
        labels.push(format!("{:02}:00", hour % 24));
        values.push(Some(value as f64));
    }
    Ok(Series { labels, values })
}

/// A compact number for an axis: 950, 1.2k, 3.4M, 5.6G.
fn short(value: f64) -> String {
    let (scaled, unit) = match value.abs() {
        v if v >= 1e9 => (value / 1e9, "G"),
        v if v >= 1e6 => (value / 1e6, "M"),
        v if v >= 1e3 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    if unit.is_empty() && scaled.fract() == 0.0 {
        format!("{scaled:.0}")
    } else {
        format!("{scaled:.1}{unit}")
    }
}

fn draw(series: &Series) -> Result<String, Box<dyn std::error::Error + '_>> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (480, 220)).into_drawing_area();
        root.fill(&WHITE)?;
        let max = series
            .values
            .iter()
            .flatten()
            .copied()
            .fold(0.0_f64, f64::max)
            .max(1.0)
            * 1.1;
        let steps = series.labels.len().max(2);
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(24)
            .y_label_area_size(48)
            .build_cartesian_2d(0..steps - 1, 0.0..max)?;
        let label = |i: &usize| series.labels.get(*i).cloned().unwrap_or_default();
        let value = |v: &f64| short(*v);
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(5)
            .x_label_formatter(&label)
            .y_label_formatter(&value)
            .light_line_style(RGBColor(240, 242, 246))
            .bold_line_style(RGBColor(225, 228, 234))
            .draw()?;
        let line = RGBColor(36, 87, 197);
        // One line per run of known values; a day without a figure is a gap, never a zero.
        let mut run: Vec<(usize, f64)> = Vec::new();
        for (i, v) in series.values.iter().enumerate() {
            match v {
                Some(v) => run.push((i, *v)),
                None if !run.is_empty() => {
                    chart.draw_series(LineSeries::new(std::mem::take(&mut run), &line))?;
                }
                None => {}
            }
        }
        if !run.is_empty() {
            chart.draw_series(
                run.iter()
                    .map(|&(i, v)| Circle::new((i, v), 2, line.filled())),
            )?;
            chart.draw_series(LineSeries::new(run, &line))?;
        }
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_its_labels_and_no_script() {
        let series = Series {
            labels: vec!["11-01".into(), "11-02".into(), "11-03".into()],
            values: vec![Some(10.0), None, Some(2500.0)],
        };
        let svg = draw(&series).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("11-01"), "{svg}");
        assert!(svg.contains("2.5k") || svg.contains("2.0k"), "{svg}");
        assert!(!svg.contains("<script"), "{svg}");
        // An empty series still draws (axes only).
        let empty = Series {
            labels: vec![],
            values: vec![],
        };
        assert!(draw(&empty).unwrap().starts_with("<svg"));
    }

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(short(950.0), "950");
        assert_eq!(short(1200.0), "1.2k");
        assert_eq!(short(3_400_000.0), "3.4M");
        assert_eq!(short(5.6e9), "5.6G");
    }
}
