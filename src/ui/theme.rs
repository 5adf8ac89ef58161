//! Every colour and style of the monitor. Nothing else in the crate names a colour. With
//! `NO_COLOR` set, styles keep only their modifiers (bold, reversed, underlined).

use ratatui::style::{Color, Modifier, Style};

use crate::engine::Outcome;
use crate::engine::{CloseCause, LinkState};

/// A link state's family, for the timeline's colours and glyphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Up,
    Connecting,
    Stalled,
    Down,
    /// The serial device went away (unplugged).
    Gone,
    Backoff,
    None,
}

impl LinkKind {
    pub fn of(state: &LinkState) -> Self {
        match state {
            LinkState::Up => Self::Up,
            LinkState::Connecting { .. } | LinkState::Configuring => Self::Connecting,
            LinkState::Stalled => Self::Stalled,
            LinkState::Closed(CloseCause::DeviceGone) => Self::Gone,
            LinkState::Closed(_) | LinkState::Stopped => Self::Down,
            LinkState::Backoff { .. } | LinkState::Contended { .. } => Self::Backoff,
        }
    }

    /// Distinct glyphs, so the bar reads without colour too.
    pub fn glyph(self) -> char {
        match self {
            Self::Up => '█',
            Self::Connecting => '▒',
            Self::Stalled => '!',
            Self::Down => '×',
            Self::Gone => '∅',
            Self::Backoff => '░',
            Self::None => ' ',
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Theme {
    pub no_color: bool,
}

impl Theme {
    /// Reads `NO_COLOR` (any non-empty value disables colour).
    pub fn from_env() -> Self {
        Self {
            no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        }
    }

    fn fg(&self, color: Color) -> Style {
        if self.no_color {
            Style::default()
        } else {
            Style::default().fg(color)
        }
    }

    pub fn text(&self) -> Style {
        Style::default()
    }

    pub fn muted(&self) -> Style {
        if self.no_color {
            Style::default()
        } else {
            Style::default().fg(Color::DarkGray)
        }
    }

    pub fn header(&self) -> Style {
        if self.no_color {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default().bg(Color::Blue).fg(Color::White)
        }
    }

    pub fn border(&self, focused: bool) -> Style {
        match (focused, self.no_color) {
            (true, true) => Style::default().add_modifier(Modifier::BOLD),
            (true, false) => Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
            (false, _) => self.muted(),
        }
    }

    pub fn title(&self, focused: bool) -> Style {
        if focused {
            self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
        } else {
            Style::default().add_modifier(Modifier::BOLD)
        }
    }

    pub fn selected(&self, focused: bool) -> Style {
        if focused {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default().add_modifier(Modifier::UNDERLINED)
        }
    }

    pub fn pending(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    pub fn good(&self) -> Style {
        self.fg(Color::Green)
    }

    pub fn warn(&self) -> Style {
        self.fg(Color::Yellow)
    }

    pub fn bad(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    /// A QR code's cells: light modules drawn in the foreground on a dark background, forced
    /// so that the code keeps its contrast on a light terminal too.
    pub fn qr(&self) -> Style {
        if self.no_color {
            Style::default()
        } else {
            Style::default().fg(Color::White).bg(Color::Black)
        }
    }

    pub fn key(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    pub fn badge(&self, outcome: Outcome) -> Style {
        let base = Style::default().add_modifier(Modifier::BOLD);
        if self.no_color {
            return base.add_modifier(Modifier::REVERSED);
        }
        let bg = match outcome {
            Outcome::Skipped => Color::DarkGray,
            Outcome::Synced => Color::Green,
            Outcome::Forced => Color::Blue,
            Outcome::Failed => Color::Red,
        };
        base.bg(bg).fg(Color::White)
    }

    pub fn link(&self, kind: LinkKind) -> Style {
        match kind {
            LinkKind::Up => self.fg(Color::Green),
            LinkKind::Connecting => self.fg(Color::Yellow),
            LinkKind::Stalled => self.fg(Color::Magenta).add_modifier(Modifier::BOLD),
            LinkKind::Down | LinkKind::Gone => self.fg(Color::Red).add_modifier(Modifier::BOLD),
            LinkKind::Backoff => self.fg(Color::Red),
            LinkKind::None => self.muted(),
        }
    }

    pub fn gauge(&self, fraction: f64) -> Style {
        if fraction >= 1.0 {
            self.warn()
        } else {
            self.good()
        }
    }
}
