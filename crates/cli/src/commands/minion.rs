//! `tend minion show ID`: one minion in detail: its key, connection, every
//! fact, its last jobs and recent events.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use tend_bus::ControlClient;
use tend_proto::v1::{
    ChangeKeys, GetOrders, ListEvents, ListJobs, ListKeys, control_reply, control_request,
};

use crate::context::Ctx;
use crate::output::{self, json};
use crate::{connection, request};

/// One minion in detail: key, connection, every fact, recent events.
#[derive(clap::Args)]
#[command(after_help = "Example:\n  tend minion show web1")]
pub struct Args {
    #[command(subcommand)]
    what: MinionCommand,
}

#[derive(Subcommand)]
enum MinionCommand {
    /// Everything the master knows of one minion.
    Show {
        #[arg(add = crate::complete::minions())]
        id: String,
        /// Recent events to show.
        #[arg(long, default_value_t = 10)]
        events: u32,
    },
    /// Lets a minion heal itself while cut off from every master (`on`,
    /// the default) or not (`off`): its standing orders are sent again at
    /// once. Kept as the key label `autonomy`.
    #[command(after_help = "Example:\n  tend minion autonomy web1 off")]
    Autonomy {
        #[arg(add = crate::complete::minions())]
        id: String,
        #[arg(value_parser = ["on", "off"])]
        setting: String,
    },
}

/// Runs `tend minion`; its exit status.
pub fn exec(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let mut client = connection::connect(&ctx.global)?;
    match args.what {
        MinionCommand::Show { id, events } => show(&mut client, &id, events, ctx.json()),
        MinionCommand::Autonomy { id, setting } => {
            // `on` removes the label: on is the default.
            let label = if setting == "off" {
                "autonomy=off"
            } else {
                "autonomy="
            };
            request::ask(
                &mut client,
                control_request::Body::ChangeKeys(ChangeKeys {
                    action: "label".into(),
                    kind: "minion".into(),
                    pattern: id.clone(),
                    labels: vec![label.into()],
                    ..Default::default()
                }),
                |body| match body {
                    control_reply::Body::KeysChanged(k) => Some(k),
                    _ => None,
                },
            )?;
            if ctx.json() {
                println!("{}", serde_json::json!({"minion": id, "autonomy": setting}));
            } else {
                println!("autonomy {setting} for {id}: its standing orders go to it now");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tend minion show ID`: the minion, its key and its recent events.
fn show(client: &mut ControlClient, id: &str, recent: u32, json: bool) -> anyhow::Result<ExitCode> {
    let Some(minion) = request::list_minions(client)?
        .into_iter()
        .find(|m| m.id == id)
    else {
        bail!("the master knows no minion {id:?}: `tend minions` lists those it knows");
    };
    let fingerprint = request::ask(
        client,
        control_request::Body::ListKeys(ListKeys {}),
        |body| match body {
            control_reply::Body::Keys(k) => Some(k),
            _ => None,
        },
    )?
    .and_then(|k| {
        k.keys
            .into_iter()
            .find(|k| k.name == id && k.kind == "minion")
    })
    .map(|k| k.fingerprint)
    .unwrap_or_default();
    let events = if recent > 0 {
        request::list_events(
            client,
            ListEvents {
                minion: id.to_string(),
                limit: recent,
                ..Default::default()
            },
        )?
    } else {
        Vec::new()
    };
    // Its last jobs.
    let jobs = request::ask(
        client,
        control_request::Body::ListJobs(ListJobs {
            limit: 5,
            minion: id.to_string(),
            ..Default::default()
        }),
        |body| match body {
            control_reply::Body::Jobs(list) => Some(list.jobs),
            _ => None,
        },
    )?
    .unwrap_or_default();
    let orders = request::ask(
        client,
        control_request::Body::GetOrders(GetOrders {
            minion: id.to_string(),
        }),
        |body| match body {
            control_reply::Body::Orders(o) => Some(o),
            _ => None,
        },
    )?
    .unwrap_or_default();
    if json {
        println!(
            "{}",
            json::minion_detail(&minion, &fingerprint, &events, &jobs, &orders)
        );
    } else {
        output::minions::show(&minion, &fingerprint, &events, &jobs, &orders);
    }
    Ok(ExitCode::SUCCESS)
}
