//! `edgeimg-tpm`: the device's TPM operations as a small separate program, so that the
//! updater itself does not link the TCG software stack: images for boards without a TPM
//! (most Raspberry Pis) carry neither this nor libtss2. Output is one JSON object.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgeimg_tpm::{release_event, Tpm, RELEASE_PCR};
use serde_json::json;

#[derive(Parser)]
#[command(name = "edgeimg-tpm", version, about = "edgeimg's TPM operations on a device (JSON output)")]
struct Cli {
    /// TCTI: `device:/dev/tpmrm0` (kernel resource manager), `swtpm:host=127.0.0.1,port=2321`.
    #[arg(long, env = "EDGEIMG_TPM_TCTI", default_value = "device:/dev/tpmrm0")]
    tcti: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Extend PCR 15 with the booted release (once per boot, before the network is up).
    Measure {
        #[arg(long)]
        image: String,
        #[arg(long = "release")]
        version: String,
        #[arg(long)]
        root_hash: String,
    },
    /// Read a PCR of the SHA-256 bank.
    Pcr {
        #[arg(default_value_t = RELEASE_PCR)]
        index: u8,
    },
    /// The endorsement and attestation keys' public parts (creates the AK on first use).
    Keys {
        /// Where the AK's TPM-wrapped blobs are kept.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Recover the server's credential secret (TPM2_ActivateCredential): proves that the AK
    /// in --dir is in the TPM that holds the EK.
    Activate {
        #[arg(long)]
        dir: PathBuf,
        /// TPM2B_ID_OBJECT contents (hex).
        #[arg(long)]
        id_object: String,
        /// TPM2B_ENCRYPTED_SECRET contents (hex).
        #[arg(long)]
        secret: String,
    },
    /// Quote PCR 15 with a nonce (hex).
    Quote {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        nonce: String,
    },
    /// The security floor kept in TPM NV storage.
    Floor,
    /// Raise the security floor (never lowers it).
    RaiseFloor { version: u64 },
}

fn run(cli: Cli) -> Result<serde_json::Value, String> {
    let mut tpm = Tpm::open(&cli.tcti).map_err(|e| e.to_string())?;
    let e = |e: edgeimg_tpm::TpmError| e.to_string();
    Ok(match cli.command {
        Command::Measure { image, version, root_hash } => {
            tpm.measure(&release_event(&image, &version, &root_hash)).map_err(e)?;
            json!({"pcr": RELEASE_PCR, "value": hex::encode(tpm.pcr(RELEASE_PCR).map_err(e)?)})
        }
        Command::Pcr { index } => json!({"pcr": index, "value": hex::encode(tpm.pcr(index).map_err(e)?)}),
        Command::Keys { dir } => {
            let ek = tpm.endorsement_public().map_err(e)?;
            let ak = tpm.attestation_key(&dir).map_err(e)?;
            // A missing or unreadable EK certificate is not fatal: many TPMs have none.
            let ek_cert = tpm.ek_certificate().ok().flatten().map(hex::encode);
            json!({"ek": hex::encode(ek), "ak": hex::encode(ak.sec1), "ak_public": hex::encode(ak.tpmt_public),
                   "ek_cert": ek_cert})
        }
        Command::Activate { dir, id_object, secret } => {
            let unhex = |name: &str, v: &str| hex::decode(v).map_err(|_| format!("--{name}: not hex"));
            let s = tpm
                .activate_credential(&dir, &unhex("id-object", &id_object)?, &unhex("secret", &secret)?)
                .map_err(e)?;
            json!({"secret": hex::encode(s)})
        }
        Command::Quote { dir, nonce } => {
            let nonce = hex::decode(&nonce).map_err(|_| format!("--nonce {nonce}: not hex"))?;
            let q = tpm.quote(&dir, &nonce, &[RELEASE_PCR]).map_err(e)?;
            json!({"attest": hex::encode(&q.attest), "signature": hex::encode(q.signature)})
        }
        Command::Floor => json!({"floor": tpm.floor().map_err(e)?}),
        Command::RaiseFloor { version } => json!({"floor": tpm.raise_floor(version).map_err(e)?}),
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(m) => {
            eprintln!("edgeimg-tpm: {m}");
            ExitCode::FAILURE
        }
    }
}
