//! The terminal monitor's runner: terminal set-up and restore (also on panic), the log sink,
//! and one `select!` loop over terminal events, engine snapshot changes and a 1 s tick. It
//! redraws only when something changed or the tick came, never in a busy loop.

use std::time::{Duration, SystemTime};

use crossterm::event::{Event, EventStream, KeyEventKind};
use futures::StreamExt;
use log::LevelFilter;
use ratatui::Frame;
use ratatui::layout::Rect;
use tui_logger::{TuiLoggerFile, TuiWidgetState};

use crate::app::{App, Effect, HistoryView, Input};
use crate::cli::Settings;
use crate::demo::Demo;
use crate::engine::EngineHandle;
use crate::engine::Store;
use crate::ui::{self, theme::Theme};

/// How many log records the log pane keeps to scroll back through.
const LOG_PANE_DEPTH: usize = 2000;

/// Restores the terminal when dropped, whatever path leaves the loop.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Routes the log into the monitor's log pane (and `--log-file`); nothing reaches stdout or
/// stderr while the terminal is ours.
fn init_logging(settings: &Settings) -> anyhow::Result<()> {
    tui_logger::init_logger(LevelFilter::Trace)
        .map_err(|e| anyhow::anyhow!("cannot start the log pane: {e}"))?;
    tui_logger::set_default_level(settings.log_level);
    // The pane shows the last screenful; tui-logger keeps 10 000 records by default.
    tui_logger::set_buffer_depth(LOG_PANE_DEPTH);
    for noisy in ["meshtastic", "rusqlite", "mio", "tokio", "tokio_util"] {
        tui_logger::set_level_for_target(noisy, LevelFilter::Warn);
    }
    if let Some(path) = &settings.log_file {
        // Open it ourselves first, so that an unwritable path is an error, not silence.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
        tui_logger::set_log_file(TuiLoggerFile::new(&path.to_string_lossy()));
    }
    Ok(())
}

/// Runs the monitor against `settings.host()`, or against the built-in simulated radio.
pub async fn run(settings: &Settings, demo: bool) -> anyhow::Result<()> {
    init_logging(settings)?;
    // Bound before the engine starts: a taken port must not cost the radio's one TCP slot.
    let metrics = settings.metrics.map(crate::metrics::bind).transpose()?;
    let (demo, config, store) = if demo {
        let (demo, store) = Demo::start()?;
        let config = demo.config.clone();
        (Some(demo), config, store)
    } else {
        (None, settings.engine.clone(), settings.open_store()?)
    };
    // A second connection for the key history view; the engine owns the first.
    let reader = Store::open(&config.db_path)?;
    let engine = crate::headless::start_engine(config, store)?;
    let metrics = metrics
        .map(|m| m.serve(engine.snapshot.clone()))
        .transpose()?;
    let terminal = ratatui::try_init()?;
    let guard = TerminalGuard;
    let label = demo.as_ref().map(|d| d.label.clone());
    let result = event_loop(terminal, &engine, &reader, label).await;
    drop(guard);
    engine.quit().await;
    drop(metrics);
    if let Some(demo) = demo {
        demo.sim.shutdown().await;
    }
    result
}

async fn event_loop(
    mut terminal: ratatui::DefaultTerminal,
    engine: &EngineHandle,
    reader: &Store,
    demo: Option<String>,
) -> anyhow::Result<()> {
    let theme = Theme::from_env();
    let log_state = TuiWidgetState::new().set_default_display_level(LevelFilter::Trace);
    let mut app = App::new(demo);
    let mut events = EventStream::new();
    let mut snapshots = engine.snapshot.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_notice = None;
    let mut dirty = true;
    loop {
        if dirty {
            dirty = false;
            tui_logger::move_events();
            let snap = snapshots.borrow_and_update().clone();
            if let Some((at, text)) = snap
                .notice
                .as_ref()
                .filter(|(at, _)| last_notice != Some(*at))
            {
                last_notice = Some(*at);
                app.message = Some((*at, text.clone()));
            }
            app.clamp(&snap);
            let now = SystemTime::now();
            let render_log = |frame: &mut Frame<'_>, area: Rect, focused: bool| {
                ui::log::draw(
                    frame,
                    area,
                    focused,
                    app.show_log_targets,
                    &log_state,
                    &theme,
                );
            };
            terminal.draw(|frame| ui::draw(frame, &app, &snap, now, &theme, Some(&render_log)))?;
        }
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(Event::Key(key))) if key.kind == KeyEventKind::Press => {
                    let snap = snapshots.borrow().clone();
                    let effect = app.update(Input::Key(key), &snap, SystemTime::now());
                    if effect.is_some_and(|e| apply(&e, &mut app, engine, reader, &log_state)) {
                        return Ok(());
                    }
                    dirty = true;
                }
                Some(Ok(Event::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow::anyhow!("reading the terminal failed: {e}")),
                None => return Ok(()),
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                dirty = true;
            }
            _ = tick.tick() => dirty = true,
        }
    }
}

/// Carries out an effect; true when the monitor should quit.
fn apply(
    effect: &Effect,
    app: &mut App,
    engine: &EngineHandle,
    reader: &Store,
    log: &TuiWidgetState,
) -> bool {
    match effect {
        Effect::Quit => return true,
        Effect::Engine(cmd) => {
            if engine.commands.try_send(*cmd).is_err() {
                app.message = Some((SystemTime::now(), "the engine is busy; try again".into()));
            }
        }
        Effect::LoadHistory(num) => {
            let num = *num;
            let title = crate::engine::node_id(num);
            let events = reader.history(num).map_err(|e| e.to_string());
            let snap = engine.snapshot.borrow().clone();
            let _ = app.update(
                Input::History(HistoryView { num, title, events }),
                &snap,
                SystemTime::now(),
            );
        }
        Effect::Log(event) => log.transition(*event),
    }
    false
}
