//! The sync pane: the last outcome as a badge with its reason and counts, the cache's age
//! against the TTL, the countdown to the next check, and the recent outcomes as a strip.

use std::fmt::Write as _;
use std::time::SystemTime;

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::View;
use super::theme::Theme;
use super::{ago, fit, pane_block};
use crate::app::Pane;
use crate::duration::compact;
use crate::engine::Snapshot;
use crate::engine::{Outcome, SyncReport, short_hex};

/// One character per run for the history strip.
pub fn outcome_glyph(r: &SyncReport) -> char {
    match r.outcome {
        Outcome::Skipped => '·',
        // A slot given back restarted the radio's LoRa chip (below 2.8): it shows first.
        _ if r.lora_restarts > 0 => '↻',
        Outcome::Failed => '✗',
        _ if r.pushed > 0 => '▲',
        Outcome::Synced => '○',
        Outcome::Forced => '●',
    }
}

pub fn draw(frame: &mut Frame<'_>, area: Rect, view: &View<'_>) {
    let (app, snap, now, theme) = (view.app, view.snap, view.now, view.theme);
    let focused = app.focus == Pane::Sync;
    let sync = &snap.sync;
    let title = Line::from(vec![
        Span::styled(" Sync ", theme.title(focused)),
        Span::styled(
            format!(
                "check {} · TTL {} ",
                compact(sync.interval),
                compact(sync.ttl)
            ),
            theme.muted(),
        ),
    ]);
    let block = pane_block(title, focused, theme);
    let inner_width = usize::from(area.width.saturating_sub(2));
    let mut lines: Vec<Line<'_>> = Vec::new();

    if let Some(running) = &sync.running {
        lines.push(Line::from(vec![
            Span::styled(" SYNCING ", theme.badge(Outcome::Synced)),
            Span::raw(format!(
                " {} · {}",
                running.trigger.short(),
                ago(running.since, now)
            )),
        ]));
    }
    lines.extend(outcome_lines(
        sync.last.as_ref(),
        sync.running.is_some(),
        now,
        theme,
        inner_width,
    ));

    // The cache gauge and the countdown go last but must stay visible: reserve two rows.
    let rows = usize::from(area.height.saturating_sub(2));
    let mut tail = vec![
        cache_line(snap, now, theme, inner_width),
        next_line(snap, now, theme, inner_width),
    ];
    let keep = rows.saturating_sub(tail.len());
    if lines.len() > keep {
        // Wrap nothing: drop the lowest-priority lines (the reason goes last).
        lines.truncate(keep);
    }
    // Taller panes list the earlier runs too.
    let room = keep.saturating_sub(lines.len());
    for r in sync.history.iter().rev().skip(1).take(room) {
        let mut detail = format!(
            "{:>10} {:<8}{:<10}",
            ago(r.started_at, now),
            r.outcome.label(),
            r.trigger.short()
        );
        if r.outcome != Outcome::Skipped {
            let _ = write!(detail, "pushed {:<3} {}", r.pushed, compact(r.duration));
        }
        lines.push(Line::from(Span::styled(
            fit(&detail, inner_width),
            theme.muted(),
        )));
    }
    lines.append(&mut tail);
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// `label` and `n`, in `marked` when there are any.
fn count<'a>(label: &str, n: u32, marked: Style, theme: &Theme) -> Span<'a> {
    Span::styled(
        format!("{label}{n}"),
        if n > 0 { marked } else { theme.text() },
    )
}

/// The last run: badge, counts, error and reason.
fn outcome_lines<'a>(
    last: Option<&SyncReport>,
    running: bool,
    now: SystemTime,
    theme: &Theme,
    inner_width: usize,
) -> Vec<Line<'a>> {
    let mut lines = Vec::new();
    match last {
        None => lines.push(Line::from(Span::styled(
            "no sync yet: waiting for the radio link",
            theme.muted(),
        ))),
        Some(r) => {
            if !running {
                lines.push(Line::from(vec![
                    Span::styled(
                        format!(" {} ", r.outcome.label().to_uppercase()),
                        theme.badge(r.outcome),
                    ),
                    Span::raw(format!(
                        " {} · {} · {}",
                        r.trigger.short(),
                        ago(r.started_at, now),
                        compact(r.duration)
                    )),
                ]));
            }
            lines.extend(count_lines(r, theme, inner_width));
            if let Some(err) = &r.error {
                lines.push(Line::from(Span::styled(fit(err, inner_width), theme.bad())));
            }
            if r.still_missing > 0 {
                lines.push(Line::from(Span::styled(
                    fit(
                        &format!(
                            "the radio cannot keep {} pushed keys: backing off",
                            r.still_missing
                        ),
                        inner_width,
                    ),
                    theme.bad(),
                )));
            }
            if let Some(blocked) = &r.blocked {
                lines.push(Line::from(Span::styled(
                    fit(blocked, inner_width),
                    theme.warn(),
                )));
            }
            lines.push(Line::from(Span::styled(
                fit(&r.reason, inner_width),
                theme.muted(),
            )));
        }
    }

    lines
}

/// What a run counted: nothing sent for a skip; pushes, the plan, conflicts, deferrals and
/// frames otherwise.
fn count_lines<'a>(r: &SyncReport, theme: &Theme, inner_width: usize) -> Vec<Line<'a>> {
    if r.outcome == Outcome::Skipped {
        return vec![Line::from(vec![
            Span::raw(format!("known {} · ", r.known)),
            Span::styled("nothing sent", theme.good()),
        ])];
    }
    let mut lines = vec![Line::from(vec![
        count("pushed ", r.pushed, theme.warn(), theme),
        Span::raw(format!(" · known {} · in radio {}", r.known, r.in_radio)),
    ])];
    if r.plan.is_some() {
        lines.push(plan_line(r, inner_width, theme));
    }
    lines.push(Line::from(vec![
        count("conflicts ", r.conflicts, theme.pending(), theme),
        count(" · deferred ", r.deferred, theme.warn(), theme),
        Span::raw(format!(
            " · {} frame{}",
            r.frames_sent,
            if r.frames_sent == 1 { "" } else { "s" }
        )),
    ]));
    lines
}

/// What the radio protects of what it holds, the slot budget, and the keys stored only.
fn plan_line<'a>(r: &SyncReport, width: usize, theme: &Theme) -> Line<'a> {
    let gave_back = if r.released > 0 {
        format!(" · gave back {}", r.released)
    } else {
        String::new()
    };
    // Protected of held: the invariant keeps the first at most half of the second.
    let held = if r.held_after > 0 {
        format!("/{}", r.held_after)
    } else {
        String::new()
    };
    let router = if r.router_role {
        " · router: partners only"
    } else {
        ""
    };
    let text = format!(
        "protected {}{held} · slots {} · stored {}{gave_back}{router}",
        r.protected_after, r.slots, r.stored_only
    );
    Line::from(Span::styled(fit(&text, width), theme.muted()))
}

fn cache_line<'a>(snap: &Snapshot, now: SystemTime, theme: &Theme, width: usize) -> Line<'a> {
    let ttl = snap.sync.ttl;
    let Some(cache) = &snap.sync.cache else {
        return Line::from(Span::styled(
            "cache empty: the next check syncs",
            theme.warn(),
        ));
    };
    let age = now.duration_since(cache.synced_at).unwrap_or_default();
    let fraction = if ttl.is_zero() {
        1.0
    } else {
        age.as_secs_f64() / ttl.as_secs_f64()
    };
    let label = format!("cache {} ", short_hex(&cache.fingerprint));
    let tail = format!(" {}/{}", compact(age), compact(ttl));
    let bar_width = width
        .saturating_sub(label.chars().count() + tail.chars().count())
        .clamp(4, 20);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a bar of at most 20 cells"
    )]
    let filled = ((fraction.min(1.0) * bar_width as f64).round() as usize).min(bar_width);
    Line::from(vec![
        Span::raw(label),
        Span::styled("█".repeat(filled), theme.gauge(fraction)),
        Span::styled("░".repeat(bar_width - filled), theme.muted()),
        Span::raw(tail),
    ])
}

fn next_line<'a>(snap: &Snapshot, now: SystemTime, theme: &Theme, width: usize) -> Line<'a> {
    let next = match snap.sync.next_check {
        Some(t) => match t.duration_since(now) {
            Ok(d) => format!("next check {} ", compact(d)),
            Err(_) => "next check now ".into(),
        },
        None => String::new(),
    };
    let room = width.saturating_sub(next.chars().count());
    let strip: String = snap
        .sync
        .history
        .iter()
        .rev()
        .take(room)
        .map(outcome_glyph)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Line::from(vec![Span::raw(next), Span::styled(strip, theme.muted())])
}
