//! The monitor's state and how input changes it: `App::update(Action) -> Option<Effect>`. No
//! drawing, no I/O. The key bindings live in one table, [`KEYMAP`], from which dispatch, the
//! status bar's hints and the help overlay are all derived, so they never disagree.

use std::time::SystemTime;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::engine::KeyEvent as KeyHistoryEvent;
use crate::engine::{Command, NodeView, RadioKey, Snapshot};

/// The four panes, in focus order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Nodes,
    Sync,
    Link,
    Log,
}

impl Pane {
    pub const ALL: [Pane; 4] = [Pane::Nodes, Pane::Sync, Pane::Link, Pane::Log];

    pub fn title(self) -> &'static str {
        match self {
            Self::Nodes => "Nodes",
            Self::Sync => "Sync",
            Self::Link => "Link",
            Self::Log => "Log",
        }
    }

    fn next(self) -> Self {
        let i = Self::ALL.iter().position(|p| *p == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }

    fn prev(self) -> Self {
        let i = Self::ALL.iter().position(|p| *p == self).unwrap_or(0);
        Self::ALL[(i + Self::ALL.len() - 1) % Self::ALL.len()]
    }
}

/// How the node table is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Pending keys first, then missing from the radio, then the rest by last seen.
    Attention,
    LastSeen,
    Name,
    Id,
}

impl SortKey {
    pub fn label(self) -> &'static str {
        match self {
            Self::Attention => "attention",
            Self::LastSeen => "last seen",
            Self::Name => "name",
            Self::Id => "id",
        }
    }

    fn next(self) -> Self {
        match self {
            Self::Attention => Self::LastSeen,
            Self::LastSeen => Self::Name,
            Self::Name => Self::Id,
            Self::Id => Self::Attention,
        }
    }
}

/// What the operator can do; the keymap maps keys to these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    ForceSync,
    ResetCache,
    Reconnect,
    FocusNext,
    FocusPrev,
    ToggleHelp,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    StartFilter,
    CycleSort,
    Accept,
    Reject,
    TogglePin,
    OpenHistory,
    ShowContact,
    ZoomIn,
    ZoomOut,
    LogTargets,
    LogLevelUp,
    LogLevelDown,
    Escape,
}

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    In(Pane),
}

/// One line of the keymap.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    pub keys: &'static [KeyCode],
    /// How the keys are written in hints and help.
    pub label: &'static str,
    /// One or two words for the status bar.
    pub short: &'static str,
    pub help: &'static str,
    pub scope: Scope,
    pub action: Action,
    /// Shown in the status bar (when its scope applies).
    pub hint: bool,
    /// Left out of the help overlay: the second key of a pair that its first one documents.
    pub hidden: bool,
}

/// What a keymap line leaves unsaid: anywhere, no hint, in the help.
const BIND: Binding = Binding {
    keys: &[],
    label: "",
    short: "",
    help: "",
    scope: Scope::Global,
    action: Action::Escape,
    hint: false,
    hidden: false,
};

use KeyCode::{BackTab, Char, Down, End, Enter, Esc, Home, Left, PageDown, PageUp, Right, Tab, Up};

/// Every key binding. Ctrl-C always quits as well.
pub const KEYMAP: &[Binding] = &[
    Binding {
        keys: &[Char('f')],
        label: "f",
        short: "force sync",
        help: "force sync: now, ignoring the cache",
        action: Action::ForceSync,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[Char('c')],
        label: "c",
        short: "clear cache",
        help: "clear cache: next check syncs",
        action: Action::ResetCache,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[Char('R')],
        label: "R",
        short: "reconnect",
        help: "reconnect to the radio",
        action: Action::Reconnect,
        ..BIND
    },
    Binding {
        keys: &[Tab],
        label: "Tab/S-Tab",
        short: "pane",
        help: "next / previous pane",
        action: Action::FocusNext,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[BackTab],
        label: "S-Tab",
        short: "pane",
        action: Action::FocusPrev,
        hidden: true,
        ..BIND
    },
    Binding {
        keys: &[Char('+'), Char('=')],
        label: "+/-",
        short: "zoom",
        help: "zoom the link timeline",
        action: Action::ZoomIn,
        ..BIND
    },
    Binding {
        keys: &[Char('-')],
        label: "-",
        short: "zoom",
        action: Action::ZoomOut,
        hidden: true,
        ..BIND
    },
    Binding {
        keys: &[Char('?')],
        label: "?",
        short: "help",
        help: "this help",
        action: Action::ToggleHelp,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[Char('q')],
        label: "q",
        short: "quit",
        help: "quit; the link closes cleanly",
        action: Action::Quit,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[Esc],
        label: "Esc",
        short: "close",
        help: "close / cancel / clear filter",
        action: Action::Escape,
        ..BIND
    },
    Binding {
        keys: &[Up, Char('k')],
        label: "↑↓ jk",
        short: "select",
        help: "select a node",
        scope: Scope::In(Pane::Nodes),
        action: Action::Up,
        ..BIND
    },
    Binding {
        keys: &[Down, Char('j')],
        label: "j",
        short: "select",
        scope: Scope::In(Pane::Nodes),
        action: Action::Down,
        hidden: true,
        ..BIND
    },
    Binding {
        keys: &[PageUp],
        label: "PgUp/PgDn",
        short: "page",
        help: "page through nodes",
        scope: Scope::In(Pane::Nodes),
        action: Action::PageUp,
        ..BIND
    },
    Binding {
        keys: &[PageDown],
        label: "PgDn",
        short: "page",
        scope: Scope::In(Pane::Nodes),
        action: Action::PageDown,
        hidden: true,
        ..BIND
    },
    Binding {
        keys: &[Home, Char('g')],
        label: "Home/End",
        short: "first/last",
        help: "first / last node",
        scope: Scope::In(Pane::Nodes),
        action: Action::Home,
        ..BIND
    },
    Binding {
        keys: &[End, Char('G')],
        label: "End",
        short: "last",
        scope: Scope::In(Pane::Nodes),
        action: Action::End,
        hidden: true,
        ..BIND
    },
    Binding {
        keys: &[Char('/')],
        label: "/",
        short: "filter",
        help: "filter by id or name",
        scope: Scope::In(Pane::Nodes),
        action: Action::StartFilter,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[Char('s')],
        label: "s",
        short: "sort",
        help: "cycle the sort order",
        scope: Scope::In(Pane::Nodes),
        action: Action::CycleSort,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[Char('a')],
        label: "a",
        short: "accept",
        help: "accept the pending key",
        scope: Scope::In(Pane::Nodes),
        action: Action::Accept,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[Char('r')],
        label: "r",
        short: "reject",
        help: "reject the pending key",
        scope: Scope::In(Pane::Nodes),
        action: Action::Reject,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[Char('p')],
        label: "p",
        short: "pin",
        help: "pin or unpin (keeps a slot)",
        scope: Scope::In(Pane::Nodes),
        action: Action::TogglePin,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[Enter],
        label: "Enter",
        short: "history",
        help: "key history of the node",
        scope: Scope::In(Pane::Nodes),
        action: Action::OpenHistory,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[Char('Q')],
        label: "Q",
        short: "QR",
        help: "the node's contact QR code",
        scope: Scope::In(Pane::Nodes),
        action: Action::ShowContact,
        ..BIND
    },
    Binding {
        keys: &[Char('t')],
        label: "t",
        short: "targets",
        help: "show / hide log targets",
        scope: Scope::In(Pane::Log),
        action: Action::LogTargets,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[Up, Char('k')],
        label: "↑↓ jk",
        short: "target",
        help: "select a log target",
        scope: Scope::In(Pane::Log),
        action: Action::Up,
        ..BIND
    },
    Binding {
        keys: &[Down, Char('j')],
        label: "j",
        short: "target",
        scope: Scope::In(Pane::Log),
        action: Action::Down,
        hidden: true,
        ..BIND
    },
    Binding {
        keys: &[Right],
        label: "←→",
        short: "level",
        help: "target's level up / down",
        scope: Scope::In(Pane::Log),
        action: Action::LogLevelUp,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[Left],
        label: "←",
        short: "level",
        scope: Scope::In(Pane::Log),
        action: Action::LogLevelDown,
        hidden: true,
        ..BIND
    },
    Binding {
        keys: &[PageUp],
        label: "PgUp/PgDn",
        short: "scroll",
        help: "scroll (Esc: back to live)",
        scope: Scope::In(Pane::Log),
        action: Action::PageUp,
        hint: true,
        ..BIND
    },
    Binding {
        keys: &[PageDown],
        label: "PgDn",
        short: "scroll",
        scope: Scope::In(Pane::Log),
        action: Action::PageDown,
        hidden: true,
        ..BIND
    },
];

/// Bindings for the status bar: the global ones first, then the focused pane's.
pub fn hints(focus: Pane) -> impl Iterator<Item = &'static Binding> {
    KEYMAP
        .iter()
        .filter(|b| b.hint && b.scope == Scope::Global)
        .chain(
            KEYMAP
                .iter()
                .filter(move |b| b.hint && b.scope == Scope::In(focus)),
        )
}

/// What a node table row shows, after filter and sort.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodesState {
    pub selected: usize,
    pub filter: String,
    pub sort: Option<SortKey>,
}

/// A question the operator must answer with y or n.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    pub accept: bool,
    pub num: u32,
    pub question: String,
}

/// A node's key history, shown over the panes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryView {
    pub num: u32,
    pub title: String,
    pub events: Result<Vec<KeyHistoryEvent>, String>,
}

/// A node's contact (its trusted key) as a URL and a QR code, for a phone app to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactView {
    pub num: u32,
    pub title: String,
    pub url: String,
    /// The code with a one-module quiet zone, or why there is none.
    pub code: Result<crate::qr::QrText, String>,
}

impl ContactView {
    /// The contact of `node`, if it has a trusted key to share.
    pub fn of(node: &NodeView) -> Option<Self> {
        let contact = crate::engine::contact_of(&node.record)?;
        let url = crate::engine::contact_url(&contact);
        let name = crate::engine::printable(&node.record.long_name).into_owned();
        Some(Self {
            num: node.record.num,
            title: format!("{} {name}", node.record.id()).trim_end().to_owned(),
            code: crate::qr::qr_text(&url, 1).map_err(|e| e.to_string()),
            url,
        })
    }
}

/// What covers the panes and takes the keys before them; there is at most one.
///
/// Their priority, written once ([`Overlay::rank`]): a question waiting for y/n is never
/// covered, a key history opened on purpose covers the help, and the help covers the filter
/// being typed. A lower one does not replace a higher one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// Typing the node filter: Enter keeps it, Esc clears it.
    Filter,
    /// The keys: any key closes it.
    Help,
    /// A node's key history: Esc, Enter or q closes it.
    History(HistoryView),
    /// A node's contact as a QR code: Esc, Enter, q or Q closes it.
    Contact(ContactView),
    /// A y/n question: anything but y cancels.
    Confirm(Confirm),
}

impl Overlay {
    fn rank(&self) -> u8 {
        match self {
            Self::Filter => 0,
            Self::Help => 1,
            Self::History(_) | Self::Contact(_) => 2,
            Self::Confirm(_) => 3,
        }
    }
}

/// Timeline windows for `+`/`-`, in minutes.
pub const ZOOMS: [u64; 6] = [5, 15, 30, 60, 180, 720];

/// Side effects the app asks its runner for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Engine(Command),
    LoadHistory(u32),
    Log(tui_logger::TuiWidgetEvent),
    Quit,
}

/// The monitor's state besides the engine's snapshot.
#[derive(Debug)]
pub struct App {
    pub focus: Pane,
    pub nodes: NodesState,
    pub overlay: Option<Overlay>,
    pub zoom: usize,
    pub show_log_targets: bool,
    /// The result of the operator's last action, with when.
    pub message: Option<(SystemTime, String)>,
    /// Shown in the header in demo mode.
    pub demo: Option<String>,
    pub quit: bool,
}

impl Default for App {
    fn default() -> Self {
        Self::new(None)
    }
}

/// Inputs to [`App::update`].
#[derive(Debug, Clone)]
pub enum Input {
    Key(KeyEvent),
    History(HistoryView),
}

impl App {
    pub fn new(demo: Option<String>) -> Self {
        // A demo plays out in minutes: start zoomed in on the last 5.
        let zoom = if demo.is_some() { 0 } else { 2 };
        Self {
            focus: Pane::Nodes,
            nodes: NodesState {
                sort: Some(SortKey::Attention),
                ..NodesState::default()
            },
            overlay: None,
            zoom,
            show_log_targets: false,
            message: None,
            demo,
            quit: false,
        }
    }

    /// Opens `overlay` unless one of higher rank is open.
    pub fn open(&mut self, overlay: Overlay) {
        if self
            .overlay
            .as_ref()
            .is_none_or(|o| o.rank() <= overlay.rank())
        {
            self.overlay = Some(overlay);
        }
    }

    /// The question waiting for y/n, if any.
    pub fn confirm(&self) -> Option<&Confirm> {
        match &self.overlay {
            Some(Overlay::Confirm(c)) => Some(c),
            _ => None,
        }
    }

    /// The key history on screen, if any.
    pub fn history(&self) -> Option<&HistoryView> {
        match &self.overlay {
            Some(Overlay::History(h)) => Some(h),
            _ => None,
        }
    }

    pub fn showing_help(&self) -> bool {
        self.overlay == Some(Overlay::Help)
    }

    pub fn editing_filter(&self) -> bool {
        self.overlay == Some(Overlay::Filter)
    }

    /// The timeline window.
    pub fn window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(ZOOMS[self.zoom.min(ZOOMS.len() - 1)] * 60)
    }

    /// The rows of the node table, filtered and sorted.
    pub fn visible_nodes<'a>(&self, snapshot: &'a Snapshot) -> Vec<&'a NodeView> {
        let filter = self.nodes.filter.to_lowercase();
        let mut rows: Vec<&NodeView> = snapshot
            .nodes
            .iter()
            .filter(|n| {
                filter.is_empty()
                    || n.record.id().contains(&filter)
                    || n.record.long_name.to_lowercase().contains(&filter)
                    || n.record.short_name.to_lowercase().contains(&filter)
            })
            .collect();
        match self.nodes.sort.unwrap_or(SortKey::Attention) {
            SortKey::Attention => rows.sort_by_key(|n| {
                let rank = match (n.record.pending.is_some(), n.radio) {
                    (true, _) => 0,
                    (false, RadioKey::Differs | RadioKey::CannotKeep) => 1,
                    (false, RadioKey::Pushed | RadioKey::Removed) => 2,
                    _ if n.record.pinned => 3,
                    _ => 4,
                };
                (rank, std::cmp::Reverse(n.record.last_seen), n.record.num)
            }),
            SortKey::LastSeen => {
                rows.sort_by_key(|n| (std::cmp::Reverse(n.record.last_seen), n.record.num));
            }
            SortKey::Name => rows.sort_by(|a, b| {
                a.record
                    .long_name
                    .to_lowercase()
                    .cmp(&b.record.long_name.to_lowercase())
                    .then(a.record.num.cmp(&b.record.num))
            }),
            SortKey::Id => rows.sort_by_key(|n| n.record.num),
        }
        rows
    }

    /// The selected node, if any.
    pub fn selected<'a>(&self, snapshot: &'a Snapshot) -> Option<&'a NodeView> {
        self.visible_nodes(snapshot)
            .get(self.nodes.selected)
            .copied()
    }

    /// Applies one input; returns what the runner must do.
    pub fn update(&mut self, input: Input, snapshot: &Snapshot, now: SystemTime) -> Option<Effect> {
        match input {
            Input::History(view) => {
                self.open(Overlay::History(view));
                None
            }
            Input::Key(key) => self.key(key, snapshot, now),
        }
    }

    fn key(&mut self, key: KeyEvent, snapshot: &Snapshot, now: SystemTime) -> Option<Effect> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return Some(Effect::Quit);
        }
        match self.overlay.take() {
            None => {}
            Some(Overlay::Help) => return None,
            Some(Overlay::History(view)) => {
                if !matches!(key.code, KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q')) {
                    self.overlay = Some(Overlay::History(view));
                }
                return None;
            }
            Some(Overlay::Contact(view)) => {
                if !matches!(
                    key.code,
                    KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q' | 'Q')
                ) {
                    self.overlay = Some(Overlay::Contact(view));
                }
                return None;
            }
            Some(Overlay::Confirm(confirm)) => return self.answer(&confirm, key.code, now),
            Some(Overlay::Filter) => {
                self.edit_filter(key.code);
                return None;
            }
        }
        let action = KEYMAP
            .iter()
            .find(|b| {
                b.keys.contains(&key.code)
                    && (b.scope == Scope::Global || b.scope == Scope::In(self.focus))
            })
            .map(|b| b.action)?;
        self.act(action, snapshot, now)
    }

    /// The operator's answer to `confirm`: y carries it out, anything else cancels.
    fn answer(&mut self, confirm: &Confirm, code: KeyCode, now: SystemTime) -> Option<Effect> {
        if !matches!(code, KeyCode::Char('y' | 'Y')) {
            self.say(now, "cancelled: the key stays pending".into());
            return None;
        }
        let verb = if confirm.accept {
            "accepting"
        } else {
            "rejecting"
        };
        let id = crate::engine::node_id(confirm.num);
        self.say(now, format!("{verb} the new key of {id}"));
        Some(Effect::Engine(if confirm.accept {
            Command::AcceptKey(confirm.num)
        } else {
            Command::RejectKey(confirm.num)
        }))
    }

    /// A key typed into the filter; the filter overlay stays open until Enter or Esc.
    fn edit_filter(&mut self, code: KeyCode) {
        match code {
            KeyCode::Enter => {}
            KeyCode::Esc => self.nodes.filter.clear(),
            typed => {
                match typed {
                    KeyCode::Backspace => {
                        self.nodes.filter.pop();
                    }
                    KeyCode::Char(c)
                        if !c.is_control() && self.nodes.filter.chars().count() < 32 =>
                    {
                        self.nodes.filter.push(c);
                    }
                    _ => {}
                }
                self.overlay = Some(Overlay::Filter);
            }
        }
        self.nodes.selected = 0;
    }

    fn say(&mut self, now: SystemTime, text: String) {
        self.message = Some((now, text));
    }

    fn act(&mut self, action: Action, snapshot: &Snapshot, now: SystemTime) -> Option<Effect> {
        let rows = self.visible_nodes(snapshot).len();
        match action {
            Action::Quit => {
                self.quit = true;
                return Some(Effect::Quit);
            }
            Action::ForceSync | Action::ResetCache | Action::Reconnect => {
                let (said, command) = match action {
                    Action::ForceSync => ("force sync requested", Command::ForceSync),
                    Action::ResetCache => {
                        ("cache cleared: next check will sync", Command::ResetCache)
                    }
                    _ => ("reconnecting to the radio", Command::Reconnect),
                };
                self.say(now, said.into());
                return Some(Effect::Engine(command));
            }
            Action::FocusNext => self.focus = self.focus.next(),
            Action::FocusPrev => self.focus = self.focus.prev(),
            Action::ToggleHelp => self.open(Overlay::Help),
            Action::ZoomIn => self.zoom = self.zoom.saturating_sub(1),
            Action::ZoomOut => self.zoom = (self.zoom + 1).min(ZOOMS.len() - 1),
            Action::Up | Action::Down | Action::PageUp | Action::PageDown
                if self.focus == Pane::Log =>
            {
                return Some(Effect::Log(log_scroll(action)));
            }
            Action::Up
            | Action::Down
            | Action::PageUp
            | Action::PageDown
            | Action::Home
            | Action::End => self.nodes.selected = moved(self.nodes.selected, action, rows),
            Action::StartFilter => {
                self.open(Overlay::Filter);
                self.nodes.selected = 0;
            }
            Action::CycleSort => {
                let next = self.nodes.sort.unwrap_or(SortKey::Attention).next();
                self.nodes.sort = Some(next);
                self.nodes.selected = 0;
                self.say(now, format!("nodes sorted by {}", next.label()));
            }
            Action::Accept
            | Action::Reject
            | Action::TogglePin
            | Action::OpenHistory
            | Action::ShowContact => return self.on_selected(action, snapshot, now),
            Action::LogTargets => {
                self.show_log_targets = !self.show_log_targets;
                return Some(Effect::Log(tui_logger::TuiWidgetEvent::HideKey));
            }
            Action::LogLevelUp | Action::LogLevelDown => {
                return Some(Effect::Log(log_scroll(action)));
            }
            Action::Escape => {
                if self.focus == Pane::Log {
                    return Some(Effect::Log(tui_logger::TuiWidgetEvent::EscapeKey));
                }
                self.nodes.filter.clear();
            }
        }
        None
    }

    /// An action on the selected node: accept or reject its pending key, pin it, open its
    /// key history, show its contact.
    fn on_selected(
        &mut self,
        action: Action,
        snapshot: &Snapshot,
        now: SystemTime,
    ) -> Option<Effect> {
        if matches!(action, Action::Accept | Action::Reject) {
            self.ask_key_decision(action == Action::Accept, snapshot, now);
            return None;
        }
        let Some(node) = self.selected(snapshot) else {
            if action != Action::OpenHistory {
                self.say(now, "no node selected".into());
            }
            return None;
        };
        match action {
            Action::TogglePin => Some(Effect::Engine(Command::Pin(
                node.record.num,
                !node.record.pinned,
            ))),
            Action::OpenHistory => Some(Effect::LoadHistory(node.record.num)),
            _ => {
                match ContactView::of(node) {
                    Some(view) => self.open(Overlay::Contact(view)),
                    None => self.say(
                        now,
                        format!("{} has no trusted key to share", node.record.id()),
                    ),
                }
                None
            }
        }
    }

    /// `a` or `r` on the selected node: asks to accept or reject its pending key.
    fn ask_key_decision(&mut self, accept: bool, snapshot: &Snapshot, now: SystemTime) {
        let node = match self.selected(snapshot) {
            Some(node) if node.record.pending.is_some() => node,
            Some(node) => {
                return self.say(now, format!("{} has no pending key", node.record.id()));
            }
            None => return self.say(now, "no node selected".into()),
        };
        let key = node
            .record
            .pending
            .map(|k| crate::engine::key_fingerprint(&k))
            .unwrap_or_default();
        let name = if node.record.long_name.is_empty() {
            String::new()
        } else {
            format!(" ({})", crate::engine::printable(&node.record.long_name))
        };
        let question = if accept {
            format!(
                "accept new key {key} for {}{name}? it becomes trusted [y/n]",
                node.record.id()
            )
        } else {
            format!(
                "reject new key {key} for {}{name}? the trusted key goes back to the radio [y/n]",
                node.record.id()
            )
        };
        self.open(Overlay::Confirm(Confirm {
            accept,
            num: node.record.num,
            question,
        }));
    }

    /// Keeps the selection inside the rows after the node list changed.
    pub fn clamp(&mut self, snapshot: &Snapshot) {
        let rows = self.visible_nodes(snapshot).len();
        if self.nodes.selected >= rows {
            self.nodes.selected = rows.saturating_sub(1);
        }
    }
}
/// Where a movement `action` takes the selection among `rows` nodes.
fn moved(selected: usize, action: Action, rows: usize) -> usize {
    const PAGE: usize = 10;
    let last = rows.saturating_sub(1);
    match action {
        Action::Up => selected.saturating_sub(1),
        Action::Down => (selected + 1).min(last),
        Action::PageUp => selected.saturating_sub(PAGE),
        Action::PageDown => (selected + PAGE).min(last),
        Action::Home => 0,
        Action::End => last,
        _ => selected,
    }
}

/// The log pane's event for a movement or level `action`.
fn log_scroll(action: Action) -> tui_logger::TuiWidgetEvent {
    match action {
        Action::Up => tui_logger::TuiWidgetEvent::UpKey,
        Action::Down => tui_logger::TuiWidgetEvent::DownKey,
        Action::PageUp => tui_logger::TuiWidgetEvent::PrevPageKey,
        Action::LogLevelUp => tui_logger::TuiWidgetEvent::RightKey,
        Action::LogLevelDown => tui_logger::TuiWidgetEvent::LeftKey,
        _ => tui_logger::TuiWidgetEvent::NextPageKey,
    }
}
