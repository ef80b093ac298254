//! The matrix as one HTML page that fetches nothing: inline CSS, no script, no image, no
//! font. It shows the summary, the matrix (each cell a colour **and** a symbol and a word, so
//! it reads without colour), each machine's durations as a bar chart, every failure's message
//! folded in a `<details>` that opens on click, and the slowest cases.
//!
//! The elements carry `data-` attributes (machine, case, status, counts) so that a browser
//! test can check the rendered page without parsing its wording.

use std::fmt::Write as _;

use crate::matrix::{CaseRow, CaseSource, Cell, Matrix};
use crate::parse::CaseOutcome;

/// Rows shown in the page's matrix, failing ones first; the rest are counted.
pub const MAX_ROWS: usize = 2_000;
/// Failures whose message the page folds in.
pub const MAX_FAILURES: usize = 500;

/// The page of `matrix`, generated at `generated_at` (shown as is).
pub fn html_report(matrix: &Matrix, generated_at: &str) -> String {
    let mut page = String::with_capacity(16 * 1024);
    page.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>testfleet report</title>\n<style>\n",
    );
    page.push_str(STYLE);
    page.push_str("</style>\n</head>\n<body>\n");
    let _ = writeln!(
        page,
        "<header><h1>testfleet report</h1><p class=\"meta\">{} run(s) · generated {}</p></header>",
        matrix.machines.len(),
        escape(generated_at)
    );
    summary(&mut page, matrix);
    table(&mut page, matrix);
    chart(&mut page, matrix);
    failures(&mut page, matrix);
    slowest(&mut page, matrix);
    page.push_str("</body>\n</html>\n");
    page
}

const STYLE: &str = "\
:root { --pass: #1a7f37; --fail: #cf222e; --error: #9a3412; --skip: #6e7781; --absent: #afb8c1;
  --line: #d0d7de; --soft: #f6f8fa; font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; }
body { margin: 0 auto; max-width: 1200px; padding: 1rem 1.5rem 3rem; color: #1f2328; }
h1 { margin: 0.2rem 0; font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.meta { color: #59636e; margin: 0; }
.totals { display: flex; flex-wrap: wrap; gap: 0.5rem 1.5rem; font-size: 1.05rem; margin: 0.8rem 0; }
.totals b { font-size: 1.3rem; }
.machines { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 0.8rem; }
.machine { border: 1px solid var(--line); border-radius: 8px; padding: 0.6rem 0.8rem; background: var(--soft); }
.machine h3 { margin: 0 0 0.3rem; font-size: 1.05rem; } .machine p { margin: 0.15rem 0; font-size: 0.9rem; }
.run-failed, .run-timeout { color: var(--fail); } .run-completed { color: var(--pass); }
.run-interrupted { color: var(--error); }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { border: 1px solid var(--line); padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
thead th { background: var(--soft); position: sticky; top: 0; }
td.case { font-family: ui-monospace, 'SF Mono', Menlo, monospace; word-break: break-all; }
td.cell { white-space: nowrap; font-weight: 600; }
td.st-passed { background: #dafbe1; color: var(--pass); }
td.st-failed { background: #ffebe9; color: var(--fail); }
td.st-error { background: #fff1e5; color: var(--error); }
td.st-skipped { background: #eaeef2; color: var(--skip); }
td.st-absent { color: var(--absent); font-weight: 400; }
td.cell small { font-weight: 400; color: #59636e; margin-left: 0.3rem; }
.badge { display: inline-block; font-size: 0.75rem; padding: 0.05rem 0.4rem; border-radius: 1rem;
  margin-left: 0.4rem; font-family: system-ui, sans-serif; white-space: nowrap; }
.badge.platform { background: #fff8c5; border: 1px solid #d4a72c; color: #7d4e00; }
.badge.everywhere { background: #ffebe9; border: 1px solid var(--fail); color: var(--fail); }
.legend { font-size: 0.85rem; color: #59636e; }
.chart .bar-row { display: grid; grid-template-columns: 10rem 1fr 6rem; align-items: center; gap: 0.5rem; margin: 0.25rem 0; }
.chart .track { background: var(--soft); border: 1px solid var(--line); height: 1.1rem; border-radius: 3px; }
.chart .bar { height: 100%; border-radius: 2px; }
.chart .bar.tests { background: #54aeff; } .chart .bar.run { background: #8c959f; }
details { border: 1px solid var(--line); border-radius: 6px; margin: 0.4rem 0; background: #fff; }
details summary { cursor: pointer; padding: 0.4rem 0.6rem; }
details[open] summary { border-bottom: 1px solid var(--line); }
details pre { margin: 0; padding: 0.6rem; overflow-x: auto; white-space: pre-wrap; background: var(--soft); }
.note { color: #59636e; font-size: 0.9rem; }
";

fn symbol(cell: Option<&Cell>) -> (&'static str, &'static str, &'static str) {
    match cell.map(|cell| cell.status) {
        Some(CaseOutcome::Passed) => ("passed", "✓", "passed"),
        Some(CaseOutcome::Failed) => ("failed", "✗", "failed"),
        Some(CaseOutcome::Error) => ("error", "‼", "error"),
        Some(CaseOutcome::Skipped) => ("skipped", "↷", "skipped"),
        None => ("absent", "·", "not run"),
    }
}

fn summary(page: &mut String, matrix: &Matrix) {
    let totals = &matrix.summary;
    let _ = writeln!(
        page,
        "<section id=\"summary\" data-cases=\"{}\" data-failing=\"{}\" data-platform-specific=\"{}\" data-failing-everywhere=\"{}\">\n<h2>Summary</h2>\n<div class=\"totals\">\
         <span><b>{}</b> cases</span><span><b>{}</b> failing somewhere</span>\
         <span><b>{}</b> platform-specific</span><span><b>{}</b> failing everywhere</span></div>",
        totals.cases,
        totals.failing,
        totals.platform_specific,
        totals.failing_everywhere,
        totals.cases,
        totals.failing,
        totals.platform_specific,
        totals.failing_everywhere
    );
    page.push_str("<div class=\"machines\">\n");
    for column in &matrix.machines {
        let counts = &column.counts;
        let _ = write!(
            page,
            "<div class=\"machine\" data-machine=\"{name}\" data-run=\"{run}\" data-status=\"{status}\" \
             data-total=\"{total}\" data-passed=\"{passed}\" data-failed=\"{failed}\" data-errors=\"{errors}\" data-skipped=\"{skipped}\">\
             <h3>{name}</h3><p>run <code>{run}</code> <span class=\"run-{status}\">{status}</span></p>\
             <p>{passed} passed, {failed} failed, {errors} errors, {skipped} skipped</p>",
            name = escape(&column.name),
            run = escape(&column.run),
            status = column.status.as_str(),
            total = counts.total,
            passed = counts.passed,
            failed = counts.failed,
            errors = counts.errors,
            skipped = counts.skipped,
        );
        match column.source {
            CaseSource::Reports => {}
            CaseSource::Recorded => page.push_str(
                "<p class=\"note\">its reports are gone: only the failures it recorded</p>",
            ),
            CaseSource::None => page.push_str("<p class=\"note\">no test report</p>"),
        }
        for unreadable in &column.unreadable {
            let _ = write!(
                page,
                "<p class=\"note\">unreadable report <code>{}</code>: {}</p>",
                escape(&unreadable.path),
                escape(&unreadable.reason)
            );
        }
        page.push_str("</div>\n");
    }
    page.push_str("</div>\n</section>\n");
}

/// The rows the page shows: failing ones first (platform-specific first), then the others.
fn shown_rows(matrix: &Matrix) -> Vec<&CaseRow> {
    let mut rows = matrix.failing();
    rows.extend(matrix.cases.iter().filter(|row| !row.failed_somewhere()));
    rows.truncate(MAX_ROWS);
    rows
}

fn table(page: &mut String, matrix: &Matrix) {
    page.push_str(
        "<section id=\"matrix\">\n<h2>Test × machine</h2>\n<p class=\"legend\">✓ passed · ✗ failed · \
         ‼ error · ↷ skipped · · not run there. <span class=\"badge platform\">platform-specific</span> \
         failed on some machines and passed on others; <span class=\"badge everywhere\">everywhere</span> \
         failed on every machine that ran it.</p>\n<table>\n<thead><tr><th>case</th>",
    );
    for column in &matrix.machines {
        let _ = write!(
            page,
            "<th data-machine=\"{0}\">{0}</th>",
            escape(&column.name)
        );
    }
    page.push_str("</tr></thead>\n<tbody>\n");
    let rows = shown_rows(matrix);
    for row in &rows {
        let everywhere = row.failed_somewhere() && !row.platform_specific;
        let _ = write!(
            page,
            "<tr data-case=\"{}\" data-platform-specific=\"{}\" data-failed-on=\"{}\"><td class=\"case\">{}",
            escape(&row.label),
            row.platform_specific,
            escape(&row.failed_on.join(" ")),
            escape(&row.label)
        );
        if row.platform_specific {
            page.push_str("<span class=\"badge platform\">platform-specific</span>");
        } else if everywhere {
            page.push_str("<span class=\"badge everywhere\">everywhere</span>");
        }
        page.push_str("</td>");
        for (column, cell) in matrix.machines.iter().zip(&row.cells) {
            let (class, mark, word) = symbol(cell.as_ref());
            let duration = cell
                .as_ref()
                .and_then(|cell| cell.duration_ms)
                .map(|ms| format!("<small>{ms} ms</small>"))
                .unwrap_or_default();
            let title = cell
                .as_ref()
                .map(|cell| cell.message.as_str())
                .filter(|m| !m.is_empty())
                .unwrap_or(word);
            let _ = write!(
                page,
                "<td class=\"cell st-{class}\" data-machine=\"{}\" data-status=\"{class}\" title=\"{}\">{mark} {word}{duration}</td>",
                escape(&column.name),
                escape(title)
            );
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</tbody>\n</table>\n");
    if matrix.cases.len() > rows.len() {
        let _ = writeln!(
            page,
            "<p class=\"note\">{} more cases are not shown (`testfleet report --json` lists every case).</p>",
            matrix.cases.len() - rows.len()
        );
    }
    page.push_str("</section>\n");
}

fn chart(page: &mut String, matrix: &Matrix) {
    let longest = matrix
        .machines
        .iter()
        .map(|c| c.tests_duration_ms.max(c.duration_ms.unwrap_or(0)))
        .max()
        .unwrap_or(0)
        .max(1);
    page.push_str(
        "<section id=\"durations\" class=\"chart\">\n<h2>Durations per machine</h2>\n\
         <p class=\"legend\"><span class=\"badge\" style=\"background:#54aeff\">tests</span> what the reports say the tests took · \
         <span class=\"badge\" style=\"background:#8c959f;color:#fff\">run</span> the whole run (upload, script, download)</p>\n",
    );
    for column in &matrix.machines {
        for (kind, ms) in [
            ("tests", Some(column.tests_duration_ms)),
            ("run", column.duration_ms),
        ] {
            let ms = ms.unwrap_or(0);
            let percent = ms.saturating_mul(100) / longest;
            let _ = writeln!(
                page,
                "<div class=\"bar-row\" data-machine=\"{name}\" data-kind=\"{kind}\" data-ms=\"{ms}\"><span>{name} · {kind}</span>\
                 <div class=\"track\"><div class=\"bar {kind}\" style=\"width:{percent}%\"></div></div><span>{ms} ms</span></div>",
                name = escape(&column.name),
            );
        }
    }
    page.push_str("</section>\n");
}

fn failures(page: &mut String, matrix: &Matrix) {
    page.push_str("<section id=\"failures\">\n<h2>Failures</h2>\n");
    let mut shown = 0_usize;
    let mut total = 0_usize;
    for row in matrix.failing() {
        for (column, cell) in matrix.machines.iter().zip(&row.cells) {
            let Some(cell) = cell.as_ref().filter(|cell| cell.status.is_failure()) else {
                continue;
            };
            total += 1;
            if shown >= MAX_FAILURES {
                continue;
            }
            shown += 1;
            let (class, mark, word) = symbol(Some(cell));
            let text = match (cell.message.is_empty(), cell.detail.is_empty()) {
                (_, true) => cell.message.clone(),
                (true, false) => cell.detail.clone(),
                (false, false) if cell.detail.starts_with(&cell.message) => cell.detail.clone(),
                (false, false) => format!("{}\n{}", cell.message, cell.detail),
            };
            let _ = writeln!(
                page,
                "<details class=\"failure\" data-case=\"{label}\" data-machine=\"{machine}\" data-status=\"{class}\">\
                 <summary>{mark} {word} on <b>{machine}</b>: <code>{label}</code> — {message}</summary><pre>{text}</pre></details>",
                label = escape(&row.label),
                machine = escape(&column.name),
                message = escape(&cell.message),
                text = escape(&text),
            );
        }
    }
    if total == 0 {
        page.push_str("<p class=\"note\">No case failed.</p>\n");
    } else if total > shown {
        let _ = writeln!(
            page,
            "<p class=\"note\">{} more failures are not shown.</p>",
            total - shown
        );
    }
    page.push_str("</section>\n");
}

fn slowest(page: &mut String, matrix: &Matrix) {
    let rows = matrix.slowest();
    page.push_str("<section id=\"slowest\">\n<h2>Slowest cases</h2>\n");
    if rows.is_empty() {
        page.push_str("<p class=\"note\">No case has a time.</p>\n</section>\n");
        return;
    }
    page.push_str("<table>\n<thead><tr><th>case</th>");
    for column in &matrix.machines {
        let _ = write!(page, "<th>{}</th>", escape(&column.name));
    }
    page.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        let _ = write!(
            page,
            "<tr data-case=\"{0}\"><td class=\"case\">{0}</td>",
            escape(&row.label)
        );
        for cell in &row.cells {
            match cell.as_ref().and_then(|cell| cell.duration_ms) {
                Some(ms) => {
                    let _ = write!(page, "<td>{ms} ms</td>");
                }
                None => page.push_str("<td class=\"st-absent\">—</td>"),
            }
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</tbody>\n</table>\n</section>\n");
}

/// Text safe in HTML content and in double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}
