//! Scripted faults and mesh events for the simulated radio, read from a TOML file.
//!
//! ```toml
//! repeat = "4m"            # optional: run the timeline again every 4 minutes
//!
//! [[event]]
//! at = "30s"
//! kind = "drop"            # close the client's socket
//!
//! [[event]]
//! at = "1m"
//! kind = "stall"           # stop answering, keep the socket open
//! for = "20s"
//!
//! [[event]]
//! at = "2m"
//! kind = "reboot"          # down for a while, optionally forgetting "keys" or "nodes"
//! down = "5s"
//! forget = "keys"
//! ```
//! Other kinds: `refuse` (`for`), `unplug` (`down`: a serial radio's device goes away and
//! comes back), `garbage` (`bytes`), `key-change` (`node`, an index into
//! the generated nodes), `new-nodes` (`count`, optional `portnum`: they arrive as plain packets
//! on that port instead of NodeInfo), `announce` (`node`), `heard` (`node`, `portnum`: a packet
//! that creates the node if the radio does not know it), `bad-utf8-name` (`node` announces
//! names that are not UTF-8), `dm-fail` (`node`: the radio reports PKI_SEND_FAIL_PUBLIC_KEY for
//! a DM to it), the operator's `ignore`, `remove`, `favorite`, `unfavorite` (`node`),
//! `queue-full` (`for`: every QueueStatus says `free = 0`), `silent-queue` (`for`: packets get
//! no QueueStatus). Ports: `text`, `position`, `nodeinfo`, `telemetry`, `waypoint`, `alert`,
//! `traceroute`, or a protobuf name such as `RANGE_TEST_APP`.

use std::path::Path;
use std::time::Duration;

use meshtastic::protobufs::PortNum;
use serde::Deserialize;

use keysync_engine::read_text;
use keysync_engine::{deserialize_duration, deserialize_duration_opt};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scenario {
    /// Run the timeline again this long after each start.
    pub repeat: Option<Duration>,
    /// In time order.
    pub events: Vec<ScenarioEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioEvent {
    pub at: Duration,
    pub fault: Fault,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawScenario {
    #[serde(default, deserialize_with = "deserialize_duration_opt")]
    repeat: Option<Duration>,
    #[serde(default)]
    event: Vec<RawEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawEvent {
    #[serde(deserialize_with = "deserialize_duration")]
    at: Duration,
    kind: String,
    #[serde(default, rename = "for", deserialize_with = "deserialize_duration_opt")]
    duration: Option<Duration>,
    #[serde(default, deserialize_with = "deserialize_duration_opt")]
    down: Option<Duration>,
    forget: Option<Forget>,
    bytes: Option<usize>,
    node: Option<usize>,
    count: Option<usize>,
    portnum: Option<String>,
}

/// What is wrong in a scenario's text: which event, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidScenario {
    /// toml's words carry the line and the field.
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    #[error(
        "event at {}: unknown kind {kind:?} (drop, stall, refuse, reboot, unplug, garbage, key-change, new-nodes, announce, heard, bad-utf8-name, dm-fail, ignore, remove, favorite, unfavorite, queue-full, silent-queue)",
        humantime::format_duration(*at)
    )]
    UnknownKind { at: Duration, kind: String },
    #[error("event at {}: {kind} needs `{field}`", humantime::format_duration(*at))]
    Missing {
        at: Duration,
        kind: String,
        field: &'static str,
    },
    #[error(
        "{0:?} is not a port (text, position, nodeinfo, telemetry, waypoint, alert, traceroute, or a name like POSITION_APP)"
    )]
    Port(String),
}

impl RawEvent {
    fn into_event(self) -> Result<ScenarioEvent, InvalidScenario> {
        let at = self.at;
        // The fields a kind needs: each one missing is an error naming it.
        let duration = || self.need(self.duration, "for");
        let node = || self.need(self.node, "node");
        let fault = match self.kind.as_str() {
            "drop" => Fault::Drop,
            "stall" => duration().map(|duration| Fault::Stall { duration })?,
            "refuse" => duration().map(|duration| Fault::Refuse { duration })?,
            "reboot" => Fault::Reboot {
                down: self.need(self.down, "down")?,
                forget: self.forget.unwrap_or_default(),
            },
            "unplug" => Fault::Unplug {
                down: self.need(self.down, "down")?,
            },
            "garbage" => self
                .need(self.bytes, "bytes")
                .map(|bytes| Fault::Garbage { bytes })?,
            "key-change" => node().map(|node| Fault::KeyChange { node })?,
            "new-nodes" => Fault::NewNodes {
                count: self.need(self.count, "count")?,
                portnum: self.portnum.as_deref().map(parse_portnum).transpose()?,
            },
            "announce" => node().map(|node| Fault::Announce { node })?,
            "heard" => Fault::Heard {
                node: node()?,
                portnum: parse_portnum(self.portnum.as_deref().unwrap_or("position"))?,
            },
            "bad-utf8-name" => node().map(|node| Fault::BadUtf8Name { node })?,
            "dm-fail" => node().map(|node| Fault::DmFail { node })?,
            "queue-full" => duration().map(|duration| Fault::QueueFull { duration })?,
            "silent-queue" => duration().map(|duration| Fault::SilentQueue { duration })?,
            other => match OperatorAction::parse(other) {
                Some(action) => Fault::Operator {
                    action,
                    node: node()?,
                },
                None => {
                    return Err(InvalidScenario::UnknownKind {
                        at,
                        kind: other.to_owned(),
                    });
                }
            },
        };
        Ok(ScenarioEvent { at, fault })
    }

    /// `value`, or an error saying this event's kind needs `field`.
    fn need<T>(&self, value: Option<T>, field: &'static str) -> Result<T, InvalidScenario> {
        value.ok_or_else(|| InvalidScenario::Missing {
            at: self.at,
            kind: self.kind.clone(),
            field,
        })
    }
}

/// A port by its short name (`position`) or protobuf name (`POSITION_APP`).
fn parse_portnum(s: &str) -> Result<PortNum, InvalidScenario> {
    let short = match s {
        "text" => Some(PortNum::TextMessageApp),
        "position" => Some(PortNum::PositionApp),
        "nodeinfo" => Some(PortNum::NodeinfoApp),
        "telemetry" => Some(PortNum::TelemetryApp),
        "waypoint" => Some(PortNum::WaypointApp),
        "alert" => Some(PortNum::AlertApp),
        "traceroute" => Some(PortNum::TracerouteApp),
        _ => None,
    };
    short
        .or_else(|| PortNum::from_str_name(s))
        .ok_or_else(|| InvalidScenario::Port(s.to_owned()))
}

/// What the radio's operator decides about a node (AdminModule.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorAction {
    /// set_ignored_node: ignored, and the key is erased.
    Ignore,
    /// remove_by_nodenum: the node is deleted.
    Remove,
    /// set_favorite_node.
    Favorite,
    /// remove_favorite_node.
    Unfavorite,
}

impl OperatorAction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ignore" => Some(Self::Ignore),
            "remove" => Some(Self::Remove),
            "favorite" => Some(Self::Favorite),
            "unfavorite" => Some(Self::Unfavorite),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ignore => "ignore",
            Self::Remove => "remove",
            Self::Favorite => "favorite",
            Self::Unfavorite => "unfavorite",
        }
    }
    /// The AdminMessage field that carries the decision.
    pub fn admin_field(self) -> &'static str {
        match self {
            Self::Ignore => "set_ignored_node",
            Self::Remove => "remove_by_nodenum",
            Self::Favorite => "set_favorite_node",
            Self::Unfavorite => "remove_favorite_node",
        }
    }
}

/// Which nodes a reboot forgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forget {
    #[default]
    Nothing,
    Keys,
    Nodes,
}

/// Something the simulated radio can be made to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Close the current client's socket.
    Drop,
    /// Stop answering the current client (no reads, no writes) but keep its socket open.
    Stall { duration: Duration },
    /// Refuse new connections for a while (the listener is closed).
    Refuse { duration: Duration },
    /// Drop the client, be unreachable for `down`, come back having forgotten what `forget` says.
    Reboot { down: Duration, forget: Forget },
    /// The radio's USB device disappears for `down` and comes back under the same name (a
    /// serial radio; a TCP radio reboots without forgetting anything).
    Unplug { down: Duration },
    /// Send random bytes (with a bogus oversize header) to the client between frames.
    Garbage { bytes: usize },
    /// Send the client one frame with this payload, as it is (newer firmware's fields).
    Frame { payload: Vec<u8> },
    /// Generated node `node` gets a new key and announces it.
    KeyChange { node: usize },
    /// `count` new nodes appear and announce themselves, or with `portnum`, send a plain packet
    /// on that port (the radio creates them keyless).
    NewNodes {
        count: usize,
        portnum: Option<PortNum>,
    },
    /// Generated node `node` announces itself.
    Announce { node: usize },
    /// Generated node `node` sends a packet on `portnum`; an unknown node is created keyless.
    Heard { node: usize, portnum: PortNum },
    /// Generated node `node` announces names that are not valid UTF-8.
    BadUtf8Name { node: usize },
    /// The radio reports PKI_SEND_FAIL_PUBLIC_KEY for a client's DM to generated node `node`.
    DmFail { node: usize },
    /// The radio's operator decides about generated node `node`.
    Operator { action: OperatorAction, node: usize },
    /// The radio's packet queue is full for a while: every QueueStatus says `free = 0`.
    QueueFull { duration: Duration },
    /// Packets get no QueueStatus answer for a while (the firmware keeps at most two pending).
    SilentQueue { duration: Duration },
}

impl Fault {
    /// Happens on the mesh (announcements, key changes) rather than to the client's link.
    pub fn is_mesh_event(&self) -> bool {
        matches!(
            self,
            Self::KeyChange { .. }
                | Self::NewNodes { .. }
                | Self::Announce { .. }
                | Self::Heard { .. }
                | Self::BadUtf8Name { .. }
                | Self::DmFail { .. }
                | Self::Operator { .. }
                | Self::QueueFull { .. }
                | Self::SilentQueue { .. }
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {why}")]
    Read { path: String, why: std::io::Error },
    #[error("scenario {path} is not valid: {why}")]
    Parse { path: String, why: InvalidScenario },
}

/// The most a scenario file may hold: a long one is a few KiB.
const SCENARIO_FILE_MAX: u64 = 1 << 20;

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = read_text(path, SCENARIO_FILE_MAX).map_err(|why| ScenarioError::Read {
            path: path.display().to_string(),
            why,
        })?;
        Self::parse(&text).map_err(|why| ScenarioError::Parse {
            path: path.display().to_string(),
            why,
        })
    }

    /// Parses a scenario; the error says which event is wrong and why.
    pub fn parse(text: &str) -> Result<Self, InvalidScenario> {
        let raw: RawScenario = toml::from_str(text)?;
        let mut events = raw
            .event
            .into_iter()
            .map(RawEvent::into_event)
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|e| e.at);
        Ok(Self {
            repeat: raw.repeat,
            events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_in_time_order() {
        let s = Scenario::parse(
            r#"
            repeat = "3m"
            [[event]]
            at = "1m"
            kind = "reboot"
            down = "5s"
            forget = "keys"
            [[event]]
            at = "10s"
            kind = "stall"
            for = "20s"
            [[event]]
            at = "20s"
            kind = "key-change"
            node = 3
            "#,
        )
        .expect("valid scenario");
        assert_eq!(s.repeat, Some(Duration::from_secs(180)));
        let kinds: Vec<_> = s.events.iter().map(|e| e.fault.clone()).collect();
        assert_eq!(
            kinds,
            [
                Fault::Stall {
                    duration: Duration::from_secs(20)
                },
                Fault::KeyChange { node: 3 },
                Fault::Reboot {
                    down: Duration::from_secs(5),
                    forget: Forget::Keys
                },
            ]
        );
    }

    #[test]
    fn parses_mesh_and_operator_events() {
        let s = Scenario::parse(
            r#"
            [[event]]
            at = "1s"
            kind = "heard"
            node = 2
            portnum = "telemetry"
            [[event]]
            at = "2s"
            kind = "new-nodes"
            count = 5
            portnum = "POSITION_APP"
            [[event]]
            at = "3s"
            kind = "ignore"
            node = 4
            [[event]]
            at = "4s"
            kind = "dm-fail"
            node = 1
            [[event]]
            at = "5s"
            kind = "bad-utf8-name"
            node = 3
            [[event]]
            at = "6s"
            kind = "queue-full"
            for = "2s"
            "#,
        )
        .expect("valid scenario");
        let kinds: Vec<_> = s.events.iter().map(|e| e.fault.clone()).collect();
        assert_eq!(
            kinds,
            [
                Fault::Heard {
                    node: 2,
                    portnum: PortNum::TelemetryApp
                },
                Fault::NewNodes {
                    count: 5,
                    portnum: Some(PortNum::PositionApp)
                },
                Fault::Operator {
                    action: OperatorAction::Ignore,
                    node: 4
                },
                Fault::DmFail { node: 1 },
                Fault::BadUtf8Name { node: 3 },
                Fault::QueueFull {
                    duration: Duration::from_secs(2)
                },
            ]
        );
        let err = Scenario::parse(
            "[[event]]\nat = \"1s\"\nkind = \"heard\"\nnode = 1\nportnum = \"smoke\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a port"), "{err}");
    }

    #[test]
    fn rejects_unknown_kinds_and_fields() {
        let err = Scenario::parse("[[event]]\nat = \"1s\"\nkind = \"explode\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown kind \"explode\""), "{err}");
        let err = Scenario::parse("[[event]]\nat = \"1s\"\nkind = \"stall\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("stall needs `for`"), "{err}");
        assert!(Scenario::parse("[[event]]\nat = \"1s\"\nkind = \"drop\"\nbogus = 1").is_err());
        assert!(Scenario::parse("[[event]]\nat = \"soon\"\nkind = \"drop\"").is_err());
    }
}
