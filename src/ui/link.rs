//! The link pane: the state now, a timeline bar over the chosen window with the sync runs
//! marked above it, whether drops followed syncs, and the latest state changes.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::View;
use super::sync::outcome_glyph;
use super::theme::{LinkKind, Theme};
use super::{ago, fit, pane_block};
use crate::app::Pane;
use crate::duration::compact;
use crate::engine::ClientView;
use crate::engine::SyncReport;
use crate::engine::{CloseCause, LinkEvent, LinkState, LinkStatus};
use crate::engine::{MqttState, MqttStatus};

/// A drop within this long after a sync that sent frames counts as following it.
pub const FOLLOWS_WITHIN: Duration = Duration::from_secs(30);

/// The times an established link was lost: a close right after `Up` or `Stalled` that keysync
/// did not ask for. Failed connection attempts (refused while the radio reboots) are not drops.
fn drops(timeline: &[&LinkEvent]) -> Vec<SystemTime> {
    let mut was_up = false;
    let mut out = Vec::new();
    for e in timeline {
        match &e.state {
            LinkState::Up | LinkState::Stalled => was_up = true,
            LinkState::Closed(cause) => {
                if was_up && !matches!(cause, CloseCause::Shutdown | CloseCause::Requested) {
                    out.push(e.at);
                }
                was_up = false;
            }
            _ => {}
        }
    }
    out
}

/// The sentence the original bug hunt lacked: did the drops in the window follow syncs that
/// put frames on the wire?
pub fn correlation(
    timeline: &[&LinkEvent],
    reports: &[&SyncReport],
    now: SystemTime,
    window: Duration,
) -> String {
    let start = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
    let drops: Vec<SystemTime> = drops(timeline)
        .into_iter()
        .filter(|at| *at >= start && *at <= now)
        .collect();
    if drops.is_empty() {
        return format!("no drops in the last {}", compact(window));
    }
    let followed = drops
        .iter()
        .filter(|drop| {
            reports.iter().any(|r| {
                let end = r.started_at + r.duration + FOLLOWS_WITHIN;
                r.frames_sent > 0 && r.started_at <= **drop && **drop <= end
            })
        })
        .count();
    let n = drops.len();
    let noun = if n == 1 { "drop" } else { "drops" };
    if followed == 0 {
        format!(
            "no drop came after a sync ({n} {noun} in {})",
            compact(window)
        )
    } else {
        format!(
            "{followed} of {n} {noun} came ≤{} after a sync",
            compact(FOLLOWS_WITHIN)
        )
    }
}

fn severity(kind: LinkKind) -> u8 {
    match kind {
        LinkKind::None => 0,
        LinkKind::Up => 1,
        LinkKind::Connecting => 2,
        LinkKind::Backoff => 3,
        LinkKind::Stalled => 4,
        LinkKind::Down => 5,
        LinkKind::Gone => 6,
    }
}

/// What one timeline column shows for the span `[from, to)`: the most severe state in effect
/// at any moment of it, so that a drop shorter than a column still shows.
fn state_in(timeline: &[&LinkEvent], from: SystemTime, to: SystemTime) -> LinkKind {
    let first = timeline.partition_point(|e| e.at <= from);
    let at_start = first
        .checked_sub(1)
        .map_or(LinkKind::None, |i| LinkKind::of(&timeline[i].state));
    timeline[first..]
        .iter()
        .take_while(|e| e.at < to)
        .map(|e| LinkKind::of(&e.state))
        .fold(at_start, |worst, k| {
            if severity(k) > severity(worst) {
                k
            } else {
                worst
            }
        })
}

/// The column of `t` in a window of `width` columns ending at `now`.
fn column(t: SystemTime, now: SystemTime, window: Duration, width: usize) -> Option<usize> {
    let start = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
    let offset = t.duration_since(start).ok()?;
    if offset > window || width == 0 {
        return None;
    }
    let cols = f64::from(u32::try_from(width).unwrap_or(u32::MAX));
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a column index"
    )]
    let col = (offset.as_secs_f64() / window.as_secs_f64() * cols) as usize;
    Some(col.min(width - 1))
}

/// One glyph per sync run at its column; a run that pushed outranks one that failed, and so on.
fn marks(reports: &[&SyncReport], now: SystemTime, window: Duration, width: usize) -> String {
    let rank = |c: char| match c {
        '↻' => 5,
        '▲' => 4,
        '✗' => 3,
        '●' | '○' => 2,
        '·' => 1,
        _ => 0,
    };
    let mut marks = vec![' '; width];
    for r in reports {
        if let Some(col) = column(r.started_at, now, window, width) {
            let g = outcome_glyph(r);
            if rank(g) > rank(marks[col]) {
                marks[col] = g;
            }
        }
    }
    marks.into_iter().collect()
}

/// The timeline bar: each column shows the worst state of its span.
fn bar<'a>(
    events: &[&LinkEvent],
    now: SystemTime,
    window: Duration,
    width: usize,
    theme: &Theme,
) -> Line<'a> {
    let start = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
    let step = window.as_secs_f64() / f64::from(u32::try_from(width.max(1)).unwrap_or(u32::MAX));
    let mut spans: Vec<Span<'a>> = Vec::new();
    let mut run: Option<(LinkKind, usize)> = None;
    for i in 0..u32::try_from(width).unwrap_or(0) {
        let from = start + Duration::from_secs_f64(step * f64::from(i));
        let to = (from + Duration::from_secs_f64(step)).min(now);
        let k = state_in(events, from, to.max(from));
        match &mut run {
            Some((kind, n)) if *kind == k => *n += 1,
            _ => {
                if let Some((kind, n)) = run.take() {
                    spans.push(Span::styled(
                        kind.glyph().to_string().repeat(n),
                        theme.link(kind),
                    ));
                }
                run = Some((k, 1));
            }
        }
    }
    if let Some((kind, n)) = run {
        spans.push(Span::styled(
            kind.glyph().to_string().repeat(n),
            theme.link(kind),
        ));
    }
    Line::from(spans)
}

pub fn draw(frame: &mut Frame<'_>, area: Rect, view: &View<'_>) {
    let (app, snap, now, theme) = (view.app, view.snap, view.now, view.theme);
    let focused = app.focus == Pane::Link;
    let window = app.window();
    let link = &snap.link;
    let title = Line::from(vec![
        Span::styled(" Link ", theme.title(focused)),
        Span::styled(format!("last {} (+/-) ", compact(window)), theme.muted()),
    ]);
    let block = pane_block(title, focused, theme);
    let width = usize::from(area.width.saturating_sub(2));
    let mut lines = Vec::new();

    lines.push(head_line(link, now, width, theme));

    let events: Vec<&LinkEvent> = link.timeline.iter().collect();
    let reports: Vec<&SyncReport> = snap.sync.history.iter().collect();
    lines.push(Line::from(Span::styled(
        marks(&reports, now, window, width),
        theme.warn(),
    )));
    lines.push(bar(&events, now, window, width, theme));

    let sentence = correlation(&events, &reports, now, window);
    let style = if sentence.contains(" of ") {
        theme.bad()
    } else {
        theme.good()
    };
    lines.push(Line::from(Span::styled(fit(&sentence, width), style)));

    if let Some(addr) = snap.proxy_addr {
        lines.extend(proxy_lines(addr, &snap.clients, now, width, theme));
    }
    if let Some(m) = &snap.mqtt {
        lines.push(mqtt_line(m, now, width, theme));
    }
    let rows = usize::from(area.height.saturating_sub(2));
    for e in link
        .timeline
        .iter()
        .rev()
        .take(rows.saturating_sub(lines.len()))
    {
        let age = ago(e.at, now);
        lines.push(Line::from(vec![
            Span::styled(format!("{age:>10} "), theme.muted()),
            Span::styled(
                fit(&e.state.to_string(), width.saturating_sub(11)),
                theme.link(LinkKind::of(&e.state)),
            ),
        ]));
    }
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// The link's state, how long it has held, the reconnects and the last cause.
fn head_line<'a>(link: &LinkStatus, now: SystemTime, width: usize, theme: &Theme) -> Line<'a> {
    let kind = LinkKind::of(&link.state);
    let since = now.duration_since(link.since).unwrap_or_default();
    let reconnects = link.sessions.saturating_sub(1);
    let mut head = vec![
        Span::styled(
            fit(&link.state.to_string().to_uppercase(), width / 2),
            theme.link(kind),
        ),
        Span::raw(format!(
            " {} · {reconnects} reconnect{}",
            compact(since),
            if reconnects == 1 { "" } else { "s" }
        )),
    ];
    if let Some(cause) = &link.last_cause {
        head.push(Span::styled(format!(" · last: {cause}"), theme.muted()));
    }
    Line::from(head)
}

/// The proxy's address and one line per client: how long, frames in and out, drops, when
/// last active.
fn proxy_lines<'a>(
    addr: std::net::SocketAddr,
    clients: &[ClientView],
    now: SystemTime,
    width: usize,
    theme: &Theme,
) -> Vec<Line<'a>> {
    let n = clients.len();
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("proxy {addr}"), theme.key()),
        Span::raw(format!(" · {n} client{}", if n == 1 { "" } else { "s" })),
    ])];
    for c in clients {
        let detail = format!(
            " ⇄ {} {} in {} out {} drop {} · {}",
            c.addr,
            compact(now.duration_since(c.since).unwrap_or_default()),
            c.frames_in,
            c.frames_out,
            c.dropped,
            ago(c.last_activity, now)
        );
        let style = if c.dropped > 0 {
            theme.warn()
        } else {
            theme.text()
        };
        lines.push(Line::from(Span::styled(fit(&detail, width), style)));
    }
    lines
}

/// The broker in one line: its state, what it taught, and the last error while it is down.
pub fn mqtt_text(m: &MqttStatus, now: SystemTime) -> String {
    let state = match &m.state {
        MqttState::Backoff { retry_at, .. } => format!(
            "{} · retry in {}",
            m.state,
            compact(retry_at.duration_since(now).unwrap_or_default())
        ),
        other => format!(
            "{other} {}",
            compact(now.duration_since(m.since).unwrap_or_default())
        ),
    };
    let c = &m.counts;
    let mut text = format!("{} {state} · {} keys", m.broker, c.uplink_keys);
    if let Some(fleet) = &m.fleet {
        let _ = write!(
            text,
            " · fleet {fleet} in {} out {}",
            c.fleet_in, c.fleet_out
        );
    }
    if c.ignored > 0 {
        let _ = write!(text, " · ignored {}", c.ignored);
    }
    if c.no_room > 0 {
        let _ = write!(text, " · no room {}", c.no_room);
    }
    if m.state != MqttState::Connected
        && let Some(e) = &m.last_error
    {
        let _ = write!(text, " · {e}");
    }
    text
}

fn mqtt_line<'a>(m: &MqttStatus, now: SystemTime, width: usize, theme: &Theme) -> Line<'a> {
    let style = match m.state {
        MqttState::Connected => theme.good(),
        MqttState::Connecting => theme.warn(),
        MqttState::Backoff { .. } => theme.bad(),
    };
    Line::from(Span::styled(fit(&mqtt_text(m, now), width), style))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Outcome, Trigger};

    fn refs<T>(items: &[T]) -> Vec<&T> {
        items.iter().collect()
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn up_at(s: u64) -> LinkEvent {
        LinkEvent {
            at: at(s),
            state: LinkState::Up,
        }
    }

    fn drop_at(s: u64) -> LinkEvent {
        LinkEvent {
            at: at(s),
            state: LinkState::Closed(CloseCause::ClosedByRadio),
        }
    }

    fn sync_at(s: u64, frames: u32) -> SyncReport {
        SyncReport {
            outcome: if frames > 0 {
                Outcome::Synced
            } else {
                Outcome::Skipped
            },
            pushed: frames.saturating_sub(1),
            frames_sent: frames,
            duration: Duration::from_secs(2),
            ..SyncReport::new(Trigger::Check, at(s))
        }
    }

    #[test]
    fn the_mqtt_line_says_the_state_what_it_taught_and_why_it_is_down() {
        use crate::engine::MqttCounts;
        let mut m = MqttStatus {
            broker: "mqtt://gw@broker:1883".into(),
            state: MqttState::Connected,
            since: at(0),
            last_error: Some("I/O: connection refused".into()),
            fleet: Some("north".into()),
            channels: 2,
            counts: MqttCounts {
                uplink_keys: 12,
                fleet_in: 3,
                fleet_out: 4,
                ignored: 5,
                ..MqttCounts::default()
            },
        };
        assert_eq!(
            mqtt_text(&m, at(90)),
            "mqtt://gw@broker:1883 connected 1m30s · 12 keys · fleet north in 3 out 4 · ignored 5"
        );
        m.state = MqttState::Backoff {
            attempt: 2,
            retry_at: at(100),
        };
        assert!(mqtt_text(&m, at(90)).ends_with(
            "retry in 10s · 12 keys · fleet north in 3 out 4 · ignored 5 · I/O: connection refused"
        ));
        m.counts.no_room = 7;
        assert!(
            mqtt_text(&m, at(90)).contains("ignored 5 · no room 7 · I/O"),
            "the nodes the store had no room for are counted where the operator looks"
        );
    }

    #[test]
    fn counts_drops_within_30s_after_a_sync_that_sent_frames() {
        let timeline = [
            up_at(10),
            drop_at(100),
            up_at(101),
            drop_at(500),
            up_at(501),
            drop_at(900),
        ];
        let reports = [sync_at(80, 5), sync_at(480, 0), sync_at(850, 3)];
        let s = correlation(
            &refs(&timeline),
            &refs(&reports),
            at(1000),
            Duration::from_secs(1800),
        );
        assert_eq!(s, "1 of 3 drops came ≤30s after a sync");
    }

    #[test]
    fn says_so_when_no_drop_followed_a_sync_or_there_were_none() {
        let none: [LinkEvent; 0] = [];
        let reports = [sync_at(10, 3)];
        assert_eq!(
            correlation(
                &refs(&none),
                &refs(&reports),
                at(1000),
                Duration::from_secs(1800)
            ),
            "no drops in the last 30m00s"
        );
        let timeline = [up_at(10), drop_at(500)];
        assert_eq!(
            correlation(
                &refs(&timeline),
                &refs(&reports),
                at(1000),
                Duration::from_secs(1800)
            ),
            "no drop came after a sync (1 drop in 30m00s)"
        );
    }

    #[test]
    fn refused_reconnect_attempts_are_not_drops() {
        let refused = LinkEvent {
            at: at(120),
            state: LinkState::Closed(CloseCause::Refused),
        };
        let timeline = [up_at(10), drop_at(100), refused.clone(), refused];
        let reports = [sync_at(90, 3)];
        assert_eq!(
            correlation(
                &refs(&timeline),
                &refs(&reports),
                at(300),
                Duration::from_secs(1800)
            ),
            "1 of 1 drop came ≤30s after a sync"
        );
    }

    #[test]
    fn own_shutdowns_and_requested_reconnects_are_not_drops() {
        let timeline = [
            LinkEvent {
                at: at(100),
                state: LinkState::Closed(CloseCause::Requested),
            },
            LinkEvent {
                at: at(200),
                state: LinkState::Closed(CloseCause::Shutdown),
            },
        ];
        let reports = [sync_at(90, 3)];
        assert!(
            correlation(
                &refs(&timeline),
                &refs(&reports),
                at(300),
                Duration::from_secs(1800)
            )
            .starts_with("no drops")
        );
    }
}
