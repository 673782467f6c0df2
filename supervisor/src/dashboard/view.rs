//! Drawing the dashboard: a pure function of its state, so it is tested on ratatui's test backend.

use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Sparkline, Table, TableState};

use super::state::Dashboard;
use chat_shared::status::Phase;
use chat_shared::units::{mebibytes, short_duration};

const HELP: &str = "↑↓/jk select  r restart  R reload app  s stop  l logs  / filter  q quit";

pub(crate) fn draw(frame: &mut Frame<'_>, d: &Dashboard) {
    let area = frame.area();
    let narrow = area.width < 70;
    let show_logs = d.show_logs && area.height >= 20;
    let show_charts = !narrow && area.height >= 16;
    let mut constraints = vec![Constraint::Length(1), Constraint::Min(4)];
    if show_charts {
        constraints.push(Constraint::Length(5));
    }
    if show_logs {
        constraints.push(Constraint::Percentage(35));
    }
    constraints.push(Constraint::Length(1));
    let parts = Layout::default().direction(Direction::Vertical).constraints(constraints).split(area);
    frame.render_widget(header(d), parts[0]);
    table(frame, d, parts[1], narrow);
    let mut next = 2;
    if show_charts {
        charts(frame, d, parts[next]);
        next += 1;
    }
    if show_logs {
        logs(frame, d, parts[next]);
        next += 1;
    }
    let footer = match (&d.message, d.editing_filter) {
        (_, true) => format!("filter: {}▏ (Enter to apply)", d.filter),
        (Some(message), false) => message.clone(),
        (None, false) => HELP.to_owned(),
    };
    frame.render_widget(Paragraph::new(footer).style(Style::default().fg(Color::DarkGray)), parts[next]);
}

fn header(d: &Dashboard) -> Paragraph<'static> {
    let text = match &d.snapshot {
        None => "chatctl monit: waiting for the daemon...".to_owned(),
        Some(s) => {
            let instances: usize = s.apps.iter().map(|a| a.instances.len()).sum();
            let online = s.apps.iter().flat_map(|a| &a.instances).filter(|i| i.status == Phase::Online).count();
            let chat = d.chat_totals().map_or(String::new(), |(users, rooms)| {
                let rate = d.messages_per_second.map_or("-".into(), |r| format!("{r:.1}"));
                format!("   chat: {users} connected, {rooms} rooms, {rate} msg/s")
            });
            format!(
                "chatctl monit   daemon pid {}  {}  cpu {}   {} app(s), {online}/{instances} online{chat}{}",
                s.daemon_pid,
                s.daemon_memory_bytes.map_or("-".into(), mebibytes),
                s.daemon_cpu_percent.map_or("-".into(), |c| format!("{c:.1}%")),
                s.apps.len(),
                if d.filter.is_empty() { String::new() } else { format!("   filter: {}", d.filter) }
            )
        }
    };
    Paragraph::new(text).style(Style::default().add_modifier(Modifier::BOLD))
}

fn table(frame: &mut Frame<'_>, d: &Dashboard, area: Rect, narrow: bool) {
    let rows: Vec<Row<'_>> = d
        .rows()
        .into_iter()
        .map(|(app, i)| {
            let degraded = i.chat.as_ref().and_then(|c| c.degraded.as_deref());
            let color = match i.status {
                // Serving, but cut off from the other workers.
                Phase::Online if degraded.is_some() => Color::Yellow,
                Phase::Online => Color::Green,
                Phase::Starting | Phase::Waiting => Color::Yellow,
                Phase::Stopping => Color::Cyan,
                Phase::Errored => Color::Red,
                Phase::Stopped => Color::DarkGray,
            };
            let status = if i.note.as_deref().is_some_and(|n| n.starts_with("draining")) {
                "draining".to_owned()
            } else if i.status == Phase::Online && degraded.is_some() {
                "degraded".to_owned()
            } else {
                i.status.as_str().to_owned()
            };
            let mut cells = vec![
                Span::raw(format!("{app}[{}]", i.index)),
                Span::raw(i.pid.map_or("-".into(), |p| p.to_string())),
                Span::styled(status, Style::default().fg(color)),
                Span::raw(i.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%"))),
                Span::raw(i.memory_bytes.map_or("-".into(), mebibytes)),
                Span::raw(i.restarts.to_string()),
            ];
            if !narrow {
                cells.push(match i.last_probe {
                    Some((true, ms)) => Span::raw(format!("ok {ms}ms")),
                    Some((false, ms)) => Span::styled(format!("FAIL {ms}ms"), Style::default().fg(Color::Red)),
                    None => Span::raw("-"),
                });
                cells.push(Span::raw(i.uptime_ms.map_or("-".into(), short_duration)));
                let note = degraded.or(d.app_note(app)).map(str::to_owned).or_else(|| i.note.clone());
                cells.push(Span::raw(note.unwrap_or_default()));
            }
            Row::new(cells)
        })
        .collect();
    let mut widths = vec![
        Constraint::Length(16),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    let mut titles = vec!["instance", "pid", "status", "cpu", "memory", "restarts"];
    if !narrow {
        widths.extend([Constraint::Length(11), Constraint::Length(7), Constraint::Min(10)]);
        titles.extend(["health", "uptime", "note"]);
    }
    let table = Table::new(rows, widths)
        .header(Row::new(titles).style(Style::default().add_modifier(Modifier::UNDERLINED)))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .block(Block::default().borders(Borders::TOP));
    let mut state = TableState::default().with_selected(Some(d.selected));
    frame.render_stateful_widget(table, area, &mut state);
}

fn charts(frame: &mut Frame<'_>, d: &Dashboard, area: Rect) {
    let Some(key) = d.selected_row() else { return };
    let Some(series) = d.history.get(&key) else { return };
    let halves = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .split(area);
    let width = usize::from(halves[0].width.saturating_sub(2));
    let skip = series.len().saturating_sub(width);
    let cpu: Vec<u64> = series.iter().skip(skip).map(|(c, _)| (*c * 10.0) as u64).collect();
    let mem: Vec<u64> = series.iter().skip(skip).map(|(_, m)| *m / 1024).collect();
    let title = |what: &str| format!("{what} of {}[{}]", key.0, key.1);
    frame.render_widget(
        Sparkline::default().block(Block::default().borders(Borders::ALL).title(title("cpu"))).data(&cpu),
        halves[0],
    );
    frame.render_widget(
        Sparkline::default().block(Block::default().borders(Borders::ALL).title(title("memory"))).data(&mem),
        halves[1],
    );
}

fn logs(frame: &mut Frame<'_>, d: &Dashboard, area: Rect) {
    let lines = d.selected_logs();
    let height = usize::from(area.height.saturating_sub(2));
    let skip = lines.len().saturating_sub(height);
    let text: Vec<Line<'_>> = lines
        .into_iter()
        .skip(skip)
        .map(|r| {
            let style = if r.stream == chat_shared::ipc::LogStream::Err {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            };
            Line::styled(r.message.clone(), style)
        })
        .collect();
    let title = d.selected_row().map_or("logs".into(), |(app, i)| format!("logs of {app}[{i}]"));
    frame.render_widget(Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(title)), area);
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::super::state::tests::snapshot;
    use super::*;

    fn render(d: &Dashboard, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
        terminal.draw(|f| draw(f, d)).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| (0..width).map(|x| buffer[(x, y)].symbol().to_owned()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn shows_instances_with_pids_and_handles_a_narrow_terminal() {
        let mut d = Dashboard::new();
        d.on_snapshot(snapshot(&[("chat", &[4242, 4243])]));
        let wide = render(&d, 120, 30);
        assert!(wide.contains("chat[0]") && wide.contains("4242") && wide.contains("online"), "{wide}");
        assert!(wide.contains("daemon pid 1") && wide.contains("2/2 online"), "{wide}");
        assert!(wide.contains("chat: 6 connected, 2 rooms"), "{wide}");
        assert!(wide.contains("cpu of chat[0]") && wide.contains("r restart") && wide.contains("ok 2ms"), "{wide}");
        let narrow = render(&d, 50, 10);
        assert!(narrow.contains("4243") && !narrow.contains("cpu of"), "{narrow}");
        let waiting = render(&Dashboard::new(), 80, 10);
        assert!(waiting.contains("waiting for the daemon"), "{waiting}");
    }

    #[test]
    fn a_worker_cut_off_from_the_others_shows_degraded_with_the_reason() {
        let mut d = Dashboard::new();
        let mut s = snapshot(&[("chat", &[4242])]);
        if let Some(chat) = s.apps[0].instances[0].chat.as_mut() {
            chat.degraded = Some("redis link down: connection refused".into());
        }
        d.on_snapshot(s);
        let wide = render(&d, 120, 30);
        assert!(wide.contains("degraded") && wide.contains("redis link down: connection refused"), "{wide}");
    }

    #[test]
    fn a_failed_development_build_shows_on_its_apps_rows() {
        let mut d = Dashboard::new();
        let mut s = snapshot(&[("web", &[4242])]);
        s.apps[0].build = Some("build failed (exit 1): the previous version keeps serving".into());
        d.on_snapshot(s);
        let wide = render(&d, 140, 30);
        assert!(wide.contains("build failed (exit 1)"), "{wide}");
    }
}
