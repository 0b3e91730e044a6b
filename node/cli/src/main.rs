//! `bitorch`: the Bitorch node and its command-line tools.
//!
//! `bitorch node` runs a full node; `bitorch key` manages sr25519 keys the way Substrate's
//! `subkey` does; `bitorch wallet` signs transactions locally and submits them over JSON-RPC;
//! `bitorch chain-spec` writes chain specs; `bitorch purge-chain` deletes a chain's data;
//! `bitorch infer` runs a model locally, split into in-process stages if asked.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod infer;
mod key;
mod keystore;
mod metrics;
mod model;
mod node;
mod wallet;

/// Bitorch: a peer-to-peer network for AI inference with a proof-of-stake chain that pays for it.
#[derive(Parser)]
#[command(name = "bitorch", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Node(Box<node::NodeArgs>),
    /// Generate, inspect and use keys.
    #[command(subcommand)]
    Key(key::KeyCmd),
    /// Query balances and sign transactions against a node's RPC.
    #[command(subcommand)]
    Wallet(wallet::WalletCmd),
    /// Write a chain spec as JSON.
    ChainSpec(node::ChainSpecArgs),
    /// Delete a chain's database.
    PurgeChain(node::PurgeArgs),
    /// Run a model locally and stream its answer.
    Infer(infer::InferArgs),
    /// Import, list, remove and pull models in the node's content store.
    #[command(subcommand)]
    Model(model::ModelCmd),
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        // The cause chain on one line; no backtrace, whatever RUST_BACKTRACE says.
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Node(args) => node::run(*args),
        Command::Key(cmd) => key::run(cmd),
        Command::Wallet(cmd) => wallet::run(cmd),
        Command::ChainSpec(args) => node::chain_spec(args),
        Command::PurgeChain(args) => node::purge(args),
        Command::Infer(args) => infer::run(args),
        Command::Model(cmd) => model::run(cmd),
    }
}
