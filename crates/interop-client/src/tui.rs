//! `interop-client chat ID`: an interactive terminal chat with one contact (ratatui).
//!
//! ```text
//!  ┌──────────────────────────────────────────────────────────────────┐
//!  │ chat with +15550001                                              │ header
//!  │ ⚠ interop chat — messages leave …; end-to-end encrypted; …       │ (interop chats only)
//!  │ me: hello ✓✓ read                                                │ conversation: the
//!  │ +15550001: hi!                                                   │ profile database's
//!  │ +15550001 is typing…                                             │ typing indicator
//!  │ not sent: …                                                      │ status
//!  │ ┌ message — Enter sends, Esc quits ─────────────────────────────┐│
//!  │ │ how are y█                                                    ││ input
//!  └──────────────────────────────────────────────────────────────────┘
//!
//!  loop: draw ─▶ select { key, Client::next_event, tick } ─▶ act with the client
//!                                                            (send, typing, read, reconnect)
//! ```
//!
//! The conversation on screen is the profile database's history of the chat, read again after
//! every event that changes it (a message, a receipt) and after every send: the client stores a
//! message before it reports it and records a receipt's status before it reports the receipt,
//! so the database is the one source of truth for texts and ticks (`✓` acked by the gatekeeper,
//! `✓✓` delivered, `✓✓ read`). Typing is live only and kept here.
//!
//! # Concurrency and cancellation
//! [`Client`] is not `Send` and [`Client::next_event`] is the only reader of the connection: the
//! chat runs on the caller's (current-thread) runtime, `select!`s over crossterm's key events,
//! `next_event` and a timer, and uses the client (send, typing notices, read receipts,
//! reconnecting) between `select!`s.
//!
//! Dropping the `next_event` future while it waits for a stanza loses nothing
//! (`Connection::recv` is cancel-safe). Once it has taken a stanza it is not cancel-safe: dropped
//! while it handles one (database reads and writes, decryption), that stanza's event is lost,
//! and a drop after a message was committed but before its ack and delivery receipt went out
//! means the sender never gets that delivery receipt (the redelivery on the next connection is
//! de-duplicated silently). So the future is kept across key presses that need no client
//! (editing the input) and dropped only for Enter, a typing notice or quitting; and the
//! conversation is built from the database, re-read after every send and event, not from
//! events.
//!
//! # What this module does not do
//! - No scrolling back: the screen shows the newest messages (`history` prints more).
//! - No media sending, replies, reactions or edits; received ones show as their description or
//!   as "unsupported in this chat".
//! - One chat at a time: a message from another contact is announced on the status line only.

use std::io::{IsTerminal as _, Stdout};
use std::time::Duration;

use crossterm::event::{
    Event as TermEvent, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers,
};
use futures::StreamExt as _;
use prost::Message as _;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Paragraph, Wrap};
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{Address, Client, Event, body_of};
use crate::store::{Contact, Direction, HistoryEntry, MessageStatus};
use crate::{Error, Result};

/// How many of the newest messages the screen loads.
const HISTORY_LIMIT: u32 = 500;
/// At most one `composing` notice per this long while the user types.
const TYPING_REFRESH: Duration = Duration::from_secs(4);
/// A `paused` notice after this long without a key press.
const TYPING_IDLE: Duration = Duration::from_secs(6);
/// The contact's typing indicator goes away this long after their last `composing` (in case
/// their `paused` never comes).
const TYPING_SHOWN: Duration = Duration::from_secs(15);
/// How often the timer wakes the loop (typing timeouts, reconnecting).
const TICK: Duration = Duration::from_millis(250);
/// The first wait before reconnecting; it doubles up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_secs(1);
/// The longest wait between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// The input holds at most this many bytes (a text body's limit, PROTOCOL "Message").
const MAX_INPUT_BYTES: usize = 65_536;

/// Runs the chat with `with` (an identifier or an address) until the user quits (Esc or
/// Ctrl-C). Connects first if needed. The terminal is restored on every exit, error or panic
/// included. Standard output must be a terminal.
pub async fn run(client: &mut Client, with: &str) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        return Err(Error::Local(
            "`chat` needs a terminal (use `send` and `listen` in scripts)".into(),
        ));
    }
    // Stanza tracing on standard error would write over the screen.
    let verbose = std::mem::replace(&mut client.verbose, false);
    let result = chat(client, with).await;
    client.verbose = verbose;
    result
}

/// What the loop does next with the client, once the `next_event` future is dropped.
enum Action {
    /// `next_event` returned.
    Event(Result<Event>),
    /// Send this text.
    Send(String),
    /// Tell the contact that the user is typing (`true`) or stopped.
    Typing(bool),
    /// Try to connect again.
    Reconnect,
    /// Leave the chat.
    Quit,
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No message text.
        match self {
            Action::Event(e) => f.debug_tuple("Event").field(e).finish(),
            Action::Send(_) => f.write_str("Send"),
            Action::Typing(t) => f.debug_tuple("Typing").field(t).finish(),
            Action::Reconnect => f.write_str("Reconnect"),
            Action::Quit => f.write_str("Quit"),
        }
    }
}

async fn chat(client: &mut Client, with: &str) -> Result<()> {
    if !client.is_connected() {
        client.connect().await?;
    }
    let me = client.address().await?.ok_or(Error::NotEnlisted)?;
    let contact = client.lookup(with).await?;
    let mut screen = Screen::new(&contact, &me);
    let mut link = Link::Up;
    let mut own = OwnTyping::default();
    let mut tty = Tty::enter()?;
    let mut keys = EventStream::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    refresh(client, &contact, &mut screen, &mut link).await;

    loop {
        let action = {
            let events = client.next_event();
            tokio::pin!(events);
            loop {
                tty.draw(&screen)?;
                let up = link.is_up();
                let action = tokio::select! {
                    event = &mut events, if up => Some(Action::Event(event)),
                    key = keys.next() => match key {
                        None => Some(Action::Quit),
                        Some(Err(e)) => return Err(e.into()),
                        Some(Ok(e)) => screen.on_terminal_event(&e, Instant::now(), &mut own),
                    },
                    _ = ticker.tick() => screen.on_tick(Instant::now(), &mut own, &link),
                };
                if let Some(action) = action {
                    break action;
                }
            }
        };
        // The `next_event` future is gone: the client is free.
        match action {
            Action::Quit => {
                if own.sent() && link.is_up() {
                    let _ = client.send_typing(with, false).await;
                }
                return Ok(());
            }
            Action::Event(Ok(event)) => {
                on_event(client, &contact, &me, &mut screen, &mut link, event).await;
            }
            Action::Event(Err(e)) => failed(client, &mut screen, &mut link, "connection", e).await,
            Action::Send(text) => {
                screen.sending = Some(text.clone());
                tty.draw(&screen)?;
                let sent = if link.is_up() {
                    client.send_text(with, &text).await
                } else {
                    Err(Error::NotConnected)
                };
                screen.sending = None;
                match sent {
                    Ok(_) => screen.status.clear(),
                    Err(e) => {
                        // Give the text back so that the user can try again.
                        if screen.input.is_empty() {
                            screen.input = text;
                        }
                        failed(client, &mut screen, &mut link, "not sent", e).await;
                    }
                }
                if own.sent()
                    && link.is_up()
                    && let Err(e) = client.send_typing(with, false).await
                {
                    failed(client, &mut screen, &mut link, "typing", e).await;
                }
                refresh(client, &contact, &mut screen, &mut link).await;
            }
            Action::Typing(typing) => {
                if link.is_up()
                    && let Err(e) = client.send_typing(with, typing).await
                {
                    failed(client, &mut screen, &mut link, "typing", e).await;
                }
            }
            Action::Reconnect => match client.connect().await {
                Ok(_) => {
                    link = Link::Up;
                    screen.status = "reconnected".into();
                    refresh(client, &contact, &mut screen, &mut link).await;
                }
                Err(e) => {
                    let backoff = link.backoff();
                    screen.status = format!(
                        "offline: {}; trying again in {} s",
                        clean(&e.to_string()),
                        backoff.as_secs()
                    );
                    link = Link::Down { retry_at: Instant::now() + backoff, backoff };
                }
            },
        }
    }
}

/// Applies an event of the connection to the screen; sends read receipts for what it shows.
async fn on_event(
    client: &mut Client,
    contact: &Contact,
    me: &Address,
    screen: &mut Screen,
    link: &mut Link,
    event: Event,
) {
    match event {
        Event::Message(m) if m.from_account == contact.account => {
            screen.peer_typing = None;
            refresh(client, contact, screen, link).await;
        }
        // A copy of what this user sent from another device may belong to this chat.
        Event::Message(m) if m.from_account == me.account => {
            refresh(client, contact, screen, link).await;
        }
        Event::Message(_) => {
            screen.status = "a message arrived in another chat (see `history`)".into();
        }
        Event::Receipt { from_account, .. } if from_account == contact.account => {
            refresh(client, contact, screen, link).await;
        }
        Event::ChatState { from_account, state } if from_account == contact.account => {
            screen.peer_typing = (state == "composing").then(Instant::now);
        }
        Event::Undecryptable { from_account, .. } if from_account == contact.account => {
            screen.status = format!(
                "a message from {} could not be decrypted; it was asked for again",
                screen.name
            );
        }
        Event::IdentityChanged { account, safety_number } if account == contact.account => {
            screen.status = format!(
                "{}'s safety number changed (new phone or reinstall?): {safety_number}",
                screen.name
            );
        }
        Event::Receipt { .. }
        | Event::ChatState { .. }
        | Event::Undecryptable { .. }
        | Event::IdentityChanged { .. } => {}
    }
}

/// Reads the conversation from the profile database again; sends a read receipt for what it
/// shows that the user had not seen (`send_read` does nothing when the user's setting is off).
async fn refresh(client: &mut Client, contact: &Contact, screen: &mut Screen, link: &mut Link) {
    let history = match client.db().history(&contact.account, HISTORY_LIMIT).await {
        Ok(h) => h,
        Err(e) => {
            screen.status = format!("history: {e}");
            return;
        }
    };
    let unread = screen.show(&history);
    if !unread.is_empty()
        && link.is_up()
        && let Err(e) = client.send_read(&contact.account, &unread).await
    {
        failed(client, screen, link, "read receipt", e).await;
    }
}

/// Shows an error on the status line; a broken connection is closed and retried later.
async fn failed(client: &mut Client, screen: &mut Screen, link: &mut Link, what: &str, e: Error) {
    if breaks_link(&e) {
        client.disconnect().await.ok();
        if link.is_up() {
            *link = Link::Down { retry_at: Instant::now() + RECONNECT_MIN, backoff: RECONNECT_MIN };
        }
        screen.status = format!("{what}: {}; reconnecting…", clean(&e.to_string()));
    } else {
        screen.status = format!("{what}: {}", clean(&e.to_string()));
    }
}

/// Whether an error means the connection is unusable (reconnect), rather than one refused or
/// failed request.
fn breaks_link(e: &Error) -> bool {
    matches!(
        e,
        Error::Closed { .. }
            | Error::Transport(_)
            | Error::Stanza(_)
            | Error::NotConnected
            | Error::Io(_)
            | Error::Timeout
            | Error::Unreachable { .. }
    )
}

/// The connection as the chat sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Connected: `next_event` is polled.
    Up,
    /// Disconnected: try again at `retry_at`.
    Down {
        /// When to try.
        retry_at: Instant,
        /// The wait before this attempt.
        backoff: Duration,
    },
}

impl Link {
    fn is_up(&self) -> bool {
        matches!(self, Link::Up)
    }

    /// The wait after a failed attempt: double the last one, at most [`RECONNECT_MAX`].
    fn backoff(&self) -> Duration {
        match self {
            Link::Up => RECONNECT_MIN,
            Link::Down { backoff, .. } => (*backoff * 2).min(RECONNECT_MAX),
        }
    }
}

/// When to tell the contact that this user is typing, or stopped.
///
/// ```text
/// idle ──key──▶ composing (notice sent) ──key after TYPING_REFRESH──▶ composing (sent again)
///   ▲                │
///   └── no key for TYPING_IDLE, or the message was sent: `paused` (notice sent)
/// ```
#[derive(Debug, Default)]
struct OwnTyping {
    /// When the last `composing` notice went out; `None` while idle.
    announced: Option<Instant>,
    /// The last key press that changed the input.
    last_edit: Option<Instant>,
}

impl OwnTyping {
    /// The user changed the input at `now`: whether a `composing` notice is due.
    fn edited(&mut self, now: Instant) -> bool {
        self.last_edit = Some(now);
        match self.announced {
            Some(at) if now.saturating_duration_since(at) < TYPING_REFRESH => false,
            _ => {
                self.announced = Some(now);
                true
            }
        }
    }

    /// Time passed: whether a `paused` notice is due (no key for [`TYPING_IDLE`]).
    fn idle(&mut self, now: Instant) -> bool {
        let quiet = self.last_edit.is_none_or(|t| now.saturating_duration_since(t) >= TYPING_IDLE);
        if self.announced.is_some() && quiet {
            self.announced = None;
            return true;
        }
        false
    }

    /// The message was sent (or the chat closes): whether a `paused` notice is due.
    fn sent(&mut self) -> bool {
        self.last_edit = None;
        self.announced.take().is_some()
    }
}

/// Delivery state of an own message, as ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tick {
    /// Being sent (not acked yet).
    Sending,
    /// Acked by the gatekeeper: `✓`.
    Sent,
    /// The recipient's device stored it: `✓✓`.
    Delivered,
    /// The recipient read it: `✓✓ read`.
    Read,
    /// Not sent.
    Failed,
}

impl Tick {
    fn of(status: MessageStatus) -> Option<Self> {
        match status {
            MessageStatus::Sent => Some(Tick::Sent),
            MessageStatus::Delivered => Some(Tick::Delivered),
            MessageStatus::Read => Some(Tick::Read),
            MessageStatus::Failed => Some(Tick::Failed),
            MessageStatus::Received => None,
        }
    }

    fn mark(self) -> &'static str {
        match self {
            Tick::Sending => "…",
            Tick::Sent => "✓",
            Tick::Delivered => "✓✓",
            Tick::Read => "✓✓ read",
            Tick::Failed => "✗ not sent",
        }
    }
}

/// One message on screen. `Debug` shows no content.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    /// Sent by this user.
    mine: bool,
    /// What it says, ready to show (terminal controls replaced).
    text: String,
    /// Ticks, for own messages.
    tick: Option<Tick>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("mine", &self.mine).field("tick", &self.tick).finish()
    }
}

impl Entry {
    fn of(h: &HistoryEntry) -> Self {
        let text = match interop_e2ee::proto::Message::decode(h.content.as_slice()) {
            Ok(m) => body_of(&m).to_string(),
            Err(_) => "[unreadable message]".into(),
        };
        let mine = h.direction == Direction::Out;
        Self { mine, text: clean(&text), tick: if mine { Tick::of(h.status) } else { None } }
    }
}

/// Everything the screen shows; [`Screen::render`] draws it.
#[derive(Debug)]
struct Screen {
    /// The contact as the user named them (terminal controls replaced).
    name: String,
    /// The interop marker, for chats that cross providers.
    marker: Option<String>,
    /// The conversation, oldest first.
    entries: Vec<Entry>,
    /// The text being sent (shown with `…` until the gatekeeper acks it).
    sending: Option<String>,
    /// When the contact last said they are typing.
    peer_typing: Option<Instant>,
    /// What the user is writing.
    input: String,
    /// The last error or notice.
    status: String,
}

impl Screen {
    fn new(contact: &Contact, me: &Address) -> Self {
        Self {
            name: clean(&contact.identifier),
            marker: interop_marker(me.integrator.as_deref(), contact.integrator.as_deref()),
            entries: Vec::new(),
            sending: None,
            peer_typing: None,
            input: String::new(),
            status: String::new(),
        }
    }

    /// Shows `history` (of this chat, oldest first); returns the ids of incoming messages the
    /// user had not seen (to acknowledge as read).
    fn show(&mut self, history: &[HistoryEntry]) -> Vec<String> {
        let chat: Vec<&HistoryEntry> = history.iter().filter(|h| h.group.is_none()).collect();
        self.entries = chat.iter().map(|h| Entry::of(h)).collect();
        chat.iter()
            .filter(|h| h.direction == Direction::In && h.status == MessageStatus::Received)
            .map(|h| h.message_id.clone())
            .collect()
    }

    /// A key press (or resize); returns what the client must do, if anything.
    fn on_terminal_event(
        &mut self,
        event: &TermEvent,
        now: Instant,
        own: &mut OwnTyping,
    ) -> Option<Action> {
        let TermEvent::Key(key) = event else { return None };
        match self.on_key(key)? {
            KeyOutcome::Edited => own.edited(now).then_some(Action::Typing(true)),
            KeyOutcome::Send(text) => Some(Action::Send(text)),
            KeyOutcome::Quit => Some(Action::Quit),
        }
    }

    /// Edits the input; Enter takes its text to send, Esc and Ctrl-C quit.
    fn on_key(&mut self, key: &KeyEvent) -> Option<KeyOutcome> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Esc => Some(KeyOutcome::Quit),
            KeyCode::Char('c' | 'd') if ctrl => Some(KeyOutcome::Quit),
            KeyCode::Char('u') if ctrl => {
                self.input.clear();
                Some(KeyOutcome::Edited)
            }
            KeyCode::Enter => {
                if self.input.trim().is_empty() {
                    return None;
                }
                Some(KeyOutcome::Send(std::mem::take(&mut self.input)))
            }
            KeyCode::Backspace => self.input.pop().map(|_| KeyOutcome::Edited),
            KeyCode::Char(c)
                if !ctrl
                    && !key.modifiers.contains(KeyModifiers::ALT)
                    && !c.is_control()
                    && self.input.len() + c.len_utf8() <= MAX_INPUT_BYTES =>
            {
                self.input.push(c);
                Some(KeyOutcome::Edited)
            }
            _ => None,
        }
    }

    /// Time passed: expires the contact's typing indicator; a `paused` notice or a reconnection
    /// may be due.
    fn on_tick(&mut self, now: Instant, own: &mut OwnTyping, link: &Link) -> Option<Action> {
        if self.peer_typing.is_some_and(|t| now.saturating_duration_since(t) >= TYPING_SHOWN) {
            self.peer_typing = None;
        }
        match link {
            Link::Down { retry_at, .. } if now >= *retry_at => Some(Action::Reconnect),
            Link::Down { .. } => None,
            Link::Up => own.idle(now).then_some(Action::Typing(false)),
        }
    }

    /// The conversation as lines: `me: text ✓✓` and `<name>: text`.
    fn conversation(&self) -> Text<'static> {
        let me = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
        let them = Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD);
        let mut lines = Vec::new();
        for e in &self.entries {
            let (who, style) = if e.mine { ("me", me) } else { (self.name.as_str(), them) };
            lines.extend(message_lines(who, style, &e.text, e.tick));
        }
        if let Some(text) = &self.sending {
            lines.extend(message_lines("me", me, text, Some(Tick::Sending)));
        }
        Text::from(lines)
    }

    fn render(&self, frame: &mut ratatui::Frame<'_>) {
        let area = frame.area();
        let mut header = vec![Line::from(vec![
            Span::raw("chat with "),
            Span::styled(self.name.clone(), Style::new().add_modifier(Modifier::BOLD)),
        ])];
        if let Some(marker) = &self.marker {
            header.push(Line::styled(
                marker.clone(),
                Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
            ));
        }
        let header = Paragraph::new(header).wrap(Wrap { trim: false });
        let header_height = to_u16(header.line_count(area.width)).min(area.height / 2).max(1);
        let [top, body, typing, status, input] = Layout::vertical([
            Constraint::Length(header_height),
            Constraint::Min(1),
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(3),
        ])
        .areas(area);
        frame.render_widget(header, top);

        // The newest message sits just above the typing line; older ones scroll off the top.
        let conversation = Paragraph::new(self.conversation()).wrap(Wrap { trim: false });
        let lines = to_u16(conversation.line_count(body.width));
        let visible = lines.min(body.height);
        let shown = Rect { y: body.bottom() - visible, height: visible, ..body };
        frame.render_widget(conversation.scroll((lines - visible, 0)), shown);

        if self.peer_typing.is_some() {
            let line = Line::styled(
                format!("{} is typing…", self.name),
                Style::new().add_modifier(Modifier::ITALIC),
            );
            frame.render_widget(line, typing);
        }
        frame.render_widget(Line::styled(self.status.clone(), Style::new().fg(Color::Red)), status);
        self.render_input(frame, input);
    }

    /// The input box, showing the end of a text too long for it, and the cursor after it.
    fn render_input(&self, frame: &mut ratatui::Frame<'_>, area: Rect) {
        let block = Block::bordered().title(" message — Enter sends, Esc quits ");
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let room = usize::from(inner.width.saturating_sub(1));
        let mut shown = String::new();
        let mut width = 0;
        for c in self.input.chars().rev() {
            let w = Span::raw(c.to_string()).width();
            if width + w > room {
                break;
            }
            width += w;
            shown.insert(0, c);
        }
        frame.render_widget(Line::raw(shown), inner);
        if inner.width > 0 && inner.height > 0 {
            frame.set_cursor_position(Position::new(inner.x + to_u16(width), inner.y));
        }
    }
}

/// What a key did to the input.
#[derive(Debug, PartialEq, Eq)]
enum KeyOutcome {
    /// The text changed.
    Edited,
    /// Enter: send this text.
    Send(String),
    /// Leave the chat.
    Quit,
}

/// `who: text` (continuation lines indented), with the ticks after the last line.
fn message_lines(who: &str, style: Style, text: &str, tick: Option<Tick>) -> Vec<Line<'static>> {
    let indent = " ".repeat(Span::raw(who).width() + 2);
    let mut lines: Vec<Line<'static>> = text
        .split('\n')
        .enumerate()
        .map(|(i, part)| {
            let lead = if i == 0 {
                Span::styled(format!("{who}: "), style)
            } else {
                Span::raw(indent.clone())
            };
            Line::from(vec![lead, Span::raw(part.to_owned())])
        })
        .collect();
    if let (Some(tick), Some(last)) = (tick, lines.last_mut()) {
        let color = match tick {
            Tick::Read => Color::Green,
            Tick::Failed => Color::Red,
            _ => Color::DarkGray,
        };
        last.push_span(Span::styled(format!(" {}", tick.mark()), Style::new().fg(color)));
    }
    lines
}

/// The interop marker for a chat between this account (`own`: its integrator, `None` for a
/// gatekeeper-native account) and a contact (`contact`: likewise); `None` for native↔native.
/// The gatekeeper's promise: the user sees that the chat crosses providers and what that means.
fn interop_marker(own: Option<&str>, contact: Option<&str>) -> Option<String> {
    let own = own.map(clean);
    let contact = contact.map(clean);
    let path = match (own.as_deref(), contact.as_deref()) {
        (None, None) => return None,
        (None, Some(c)) => format!("messages leave this network for {c}"),
        (Some(o), None) => format!("messages leave {o}'s network"),
        (Some(o), Some(c)) if o == c => {
            format!("messages leave {o}'s network through the gatekeeper")
        }
        (Some(o), Some(c)) => format!("messages leave {o}'s network for {c}"),
    };
    Some(format!(
        "⚠ interop chat — {path}; end-to-end encrypted; not available here: calls, reactions, \
         edits"
    ))
}

/// Text from the network made safe to draw: terminal controls (escape sequences, carriage
/// returns) and bidirectional overrides become U+FFFD, tabs spaces; newlines stay.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' => '\n',
            '\t' => ' ',
            c if c.is_control() => '\u{FFFD}',
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}

fn to_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The terminal in raw mode on the alternate screen; dropping it restores the terminal (on
/// return, error and panic alike).
struct Tty {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    _restore: Restore,
}

impl std::fmt::Debug for Tty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tty").finish_non_exhaustive()
    }
}

impl Tty {
    fn enter() -> Result<Self> {
        crossterm::terminal::enable_raw_mode()?;
        // From here on a failure restores what was changed.
        let restore = Restore;
        crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen)?;
        let terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
        Ok(Self { terminal, _restore: restore })
    }

    fn draw(&mut self, screen: &Screen) -> Result<()> {
        self.terminal.draw(|frame| screen.render(frame))?;
        Ok(())
    }
}

/// Leaves raw mode and the alternate screen and shows the cursor when dropped.
#[derive(Debug)]
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;

    use super::*;

    fn contact(integrator: Option<&str>) -> Contact {
        Contact {
            identifier: "+15550001".into(),
            account: "bob".into(),
            integrator: integrator.map(str::to_owned),
            added_ms: 0,
        }
    }

    fn me(integrator: Option<&str>) -> Address {
        Address { account: "alice".into(), device: 1, integrator: integrator.map(str::to_owned) }
    }

    fn text(id: &str, body: &str, direction: Direction, status: MessageStatus) -> HistoryEntry {
        let m = interop_e2ee::proto::Message {
            id: id.into(),
            content: Some(interop_e2ee::proto::message::Content::Text(interop_e2ee::proto::Text {
                body: body.into(),
            })),
            ..Default::default()
        };
        HistoryEntry {
            seq: 0,
            direction,
            peer_account: "bob".into(),
            sender_account: if direction == Direction::Out { "alice" } else { "bob" }.into(),
            sender_device: 1,
            message_id: id.into(),
            content: m.encode_to_vec(),
            group: None,
            status,
            at_ms: 0,
        }
    }

    /// The screen drawn on a `width` × `height` test terminal, one string per row.
    fn draw(screen: &Screen, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| screen.render(f)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| (0..width).map(|x| buffer[(x, y)].symbol()).collect::<String>())
            .collect()
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn the_marker_shows_for_every_chat_with_an_interop_side_and_never_for_native_ones() {
        let cases: [(Option<&str>, Option<&str>, Option<&str>); 5] = [
            (None, None, None),
            (None, Some("example"), Some("messages leave this network for example")),
            (Some("example"), None, Some("messages leave example's network")),
            (Some("a"), Some("b"), Some("messages leave a's network for b")),
            (Some("a"), Some("a"), Some("messages leave a's network through the gatekeeper")),
        ];
        for (own, theirs, want) in cases {
            let got = interop_marker(own, theirs);
            match want {
                None => assert_eq!(got, None, "{own:?} {theirs:?}"),
                Some(path) => {
                    let got = got.unwrap();
                    assert!(got.starts_with("⚠ interop chat — "), "{got}");
                    assert!(got.contains(path), "{got}");
                    assert!(got.contains("end-to-end encrypted"), "{got}");
                    assert!(got.contains("not available"), "{got}");
                }
            }
        }
        // The screen takes the marker from the contact and from the own address.
        assert!(Screen::new(&contact(None), &me(None)).marker.is_none());
        assert!(Screen::new(&contact(Some("example")), &me(None)).marker.is_some());
        assert!(Screen::new(&contact(None), &me(Some("example"))).marker.is_some());
    }

    #[test]
    fn own_messages_carry_ticks_by_status_and_unread_incoming_ones_are_reported() {
        let mut screen = Screen::new(&contact(None), &me(None));
        let history = [
            text("1", "sent", Direction::Out, MessageStatus::Sent),
            text("2", "delivered", Direction::Out, MessageStatus::Delivered),
            text("3", "read", Direction::Out, MessageStatus::Read),
            text("4", "failed", Direction::Out, MessageStatus::Failed),
            text("5", "seen", Direction::In, MessageStatus::Read),
            text("6", "new", Direction::In, MessageStatus::Received),
        ];
        let unread = screen.show(&history);
        assert_eq!(unread, vec!["6".to_owned()]);
        screen.sending = Some("going".into());
        let rows = draw(&screen, 60, 16);
        let find = |s: &str| rows.iter().any(|r| r.trim_end() == s);
        for want in [
            "me: sent ✓",
            "me: delivered ✓✓",
            "me: read ✓✓ read",
            "me: failed ✗ not sent",
            "+15550001: seen",
            "+15550001: new",
            "me: going …",
        ] {
            assert!(find(want), "{want:?} not in {rows:#?}");
        }
        assert!(!rows.iter().any(|r| r.contains("interop chat")), "{rows:#?}");
    }

    #[test]
    fn the_header_shows_the_marker_and_the_newest_messages_stay_in_view() {
        let mut screen = Screen::new(&contact(Some("example")), &me(None));
        let history: Vec<_> = (0..40)
            .map(|i| text(&i.to_string(), &format!("line {i}"), Direction::In, MessageStatus::Read))
            .collect();
        screen.show(&history);
        screen.peer_typing = Some(Instant::now());
        screen.input = "draft".into();
        let rows = draw(&screen, 80, 20);
        assert_eq!(rows[0].trim_end(), "chat with +15550001");
        assert!(rows[1].starts_with("⚠ interop chat — messages leave this network"), "{rows:#?}");
        assert!(rows.iter().any(|r| r.trim_end() == "+15550001: line 39"), "{rows:#?}");
        assert!(!rows.iter().any(|r| r.trim_end() == "+15550001: line 0"), "{rows:#?}");
        assert!(rows.iter().any(|r| r.trim_end() == "+15550001 is typing…"), "{rows:#?}");
        assert!(rows.iter().any(|r| r.contains("│draft")), "{rows:#?}");
    }

    #[test]
    fn unsupported_content_and_terminal_controls_are_shown_safely() {
        let mut screen = Screen::new(&contact(None), &me(None));
        let reaction = interop_e2ee::proto::Message {
            id: "r".into(),
            content: Some(interop_e2ee::proto::message::Content::Unsupported(
                interop_e2ee::proto::Unsupported {
                    kind: "poll".into(),
                    fallback_text: String::new(),
                },
            )),
            ..Default::default()
        };
        let mut entry = text("r", "", Direction::In, MessageStatus::Read);
        entry.content = reaction.encode_to_vec();
        screen.show(&[entry, text("e", "\u{1b}[2Jhi\ragain", Direction::In, MessageStatus::Read)]);
        assert!(
            screen.entries[0].text.contains("unsupported in this chat"),
            "{:?}",
            screen.entries
        );
        assert_eq!(screen.entries[1].text, "\u{FFFD}[2Jhi\u{FFFD}again");
        assert_eq!(clean("a\tb\nc\u{202E}d"), "a b\nc\u{FFFD}d");
    }

    #[test]
    fn keys_edit_the_input_send_it_and_quit() {
        let mut screen = Screen::new(&contact(None), &me(None));
        assert_eq!(screen.on_key(&key(KeyCode::Enter)), None, "nothing to send");
        for c in "hi!".chars() {
            assert_eq!(screen.on_key(&key(KeyCode::Char(c))), Some(KeyOutcome::Edited));
        }
        assert_eq!(screen.on_key(&key(KeyCode::Backspace)), Some(KeyOutcome::Edited));
        assert_eq!(screen.on_key(&key(KeyCode::Enter)), Some(KeyOutcome::Send("hi".into())));
        assert_eq!(screen.input, "");
        assert_eq!(screen.on_key(&key(KeyCode::Backspace)), None);
        assert_eq!(screen.on_key(&key(KeyCode::Esc)), Some(KeyOutcome::Quit));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(screen.on_key(&ctrl_c), Some(KeyOutcome::Quit));
        assert_eq!(screen.input, "", "Ctrl-C types nothing");
    }

    #[test]
    fn typing_notices_are_rate_limited_and_stop_when_idle_or_sent() {
        let mut own = OwnTyping::default();
        let t0 = Instant::now();
        assert!(own.edited(t0), "the first key announces typing");
        assert!(!own.edited(t0 + Duration::from_secs(1)), "at most one notice per refresh");
        assert!(own.edited(t0 + TYPING_REFRESH + Duration::from_secs(1)));
        let last = t0 + TYPING_REFRESH + Duration::from_secs(1);
        assert!(!own.idle(last + Duration::from_secs(1)));
        assert!(own.idle(last + TYPING_IDLE), "paused after no key for a while");
        assert!(!own.idle(last + TYPING_IDLE * 2), "once");
        assert!(!own.sent(), "nothing announced: no paused notice");
        assert!(own.edited(last + TYPING_IDLE * 2));
        assert!(own.sent(), "sending ends typing");

        // The contact's indicator: shown on composing, gone after a while without news.
        let mut screen = Screen::new(&contact(None), &me(None));
        screen.peer_typing = Some(t0);
        assert!(screen.on_tick(t0 + Duration::from_secs(1), &mut own, &Link::Up).is_none());
        assert!(screen.peer_typing.is_some());
        screen.on_tick(t0 + TYPING_SHOWN, &mut own, &Link::Up);
        assert!(screen.peer_typing.is_none());
    }

    #[test]
    fn a_lost_connection_is_retried_with_a_growing_wait() {
        let now = Instant::now();
        let mut screen = Screen::new(&contact(None), &me(None));
        let mut own = OwnTyping::default();
        let down = Link::Down { retry_at: now + RECONNECT_MIN, backoff: RECONNECT_MIN };
        assert!(screen.on_tick(now, &mut own, &down).is_none());
        assert!(matches!(
            screen.on_tick(now + RECONNECT_MIN, &mut own, &down),
            Some(Action::Reconnect)
        ));
        assert_eq!(down.backoff(), RECONNECT_MIN * 2);
        let long = Link::Down { retry_at: now, backoff: RECONNECT_MAX };
        assert_eq!(long.backoff(), RECONNECT_MAX);
        assert!(breaks_link(&Error::Timeout));
        assert!(!breaks_link(&Error::Refused("recipient-unavailable".into())));
    }
}
