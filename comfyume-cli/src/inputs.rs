//! `comfyume upload` and `comfyume inputs`: the caller's own input files (what `LoadImage` and the other
//! loaders of their workflows name), and `submit --input`'s substitution of them into a workflow.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use comfyume_core::inputs::UPLOAD_INPUTS;
use serde_json::Value;

use crate::connect::ClientArgs;
use comfyume_cli::client::Client;
use comfyume_cli::exit::Fail;

/// Options of `comfyume upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The file to upload.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Store it under this name instead of the file's own.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `comfyume inputs`.
#[derive(Debug, Args)]
pub struct InputsArgs {
    /// What to do (default: list them).
    #[command(subcommand)]
    pub action: Option<InputsAction>,
    /// List as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `comfyume inputs` actions.
#[derive(Debug, Subcommand)]
pub enum InputsAction {
    /// Delete one of your inputs.
    Delete {
        /// Its name.
        #[arg(value_name = "NAME")]
        name: String,
    },
}

/// `comfyume upload`.
pub async fn upload(args: UploadArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let name = upload_file(&client, &args.file, args.name.as_deref()).await?;
    println!("{name}");
    Ok(())
}

/// `comfyume inputs`.
pub async fn inputs(args: InputsArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    match args.action {
        Some(InputsAction::Delete { name }) => {
            client.delete_input(&name).await?;
            eprintln!("deleted input '{name}'");
        }
        None => {
            let inputs = client.inputs().await?;
            if args.json {
                let list: Vec<Value> = inputs
                    .iter()
                    .map(|i| serde_json::json!({"name": i.name, "size": i.size, "modified": i.modified}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if inputs.is_empty() {
                eprintln!("no inputs yet: `comfyume upload FILE` adds one");
            } else {
                for input in inputs {
                    println!("{}\t{} bytes", input.name, input.size);
                }
            }
        }
    }
    Ok(())
}

/// Uploads `path` (under `name`, or its own file name) and returns the stored name.
pub async fn upload_file(client: &Client, path: &Path, name: Option<&str>) -> anyhow::Result<String> {
    let name = match name {
        Some(n) => n.to_string(),
        None => path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Fail::usage(format!("{} has no usable file name", path.display())))?
            .to_string(),
    };
    let data = tokio::fs::read(path)
        .await
        .map_err(|e| Fail::usage(format!("cannot read {}: {e}", path.display())))?;
    Ok(client.upload_input(&name, data).await?.name)
}

/// One `--input [NODE=]FILE` of `comfyume submit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputArg {
    /// The loader node to give the file to; `None`: the workflow's only loader, or the one already
    /// naming the file.
    pub node: Option<String>,
    /// The file.
    pub file: PathBuf,
}

/// Parses `--input [NODE=]FILE`.
pub fn parse_input_arg(text: &str) -> Result<InputArg, String> {
    if text.is_empty() {
        return Err("give a file: --input FILE or --input NODE=FILE".into());
    }
    match text.split_once('=') {
        Some((node, file)) if !node.is_empty() && !node.contains(['/', '\\']) && !file.is_empty() => {
            Ok(InputArg {
                node: Some(node.to_string()),
                file: PathBuf::from(file),
            })
        }
        _ => Ok(InputArg {
            node: None,
            file: PathBuf::from(text),
        }),
    }
}

/// The loader inputs of a workflow: `(node id, input name, current value)`, in node order.
fn loaders(prompt: &Value) -> Vec<(String, String, Option<String>)> {
    let mut found = Vec::new();
    for (id, node) in prompt.as_object().into_iter().flatten() {
        let class = node.get("class_type").and_then(Value::as_str).unwrap_or_default();
        for (c, input) in UPLOAD_INPUTS {
            if *c == class {
                let value = node.pointer(&format!("/inputs/{input}")).and_then(Value::as_str);
                found.push((id.clone(), (*input).to_string(), value.map(str::to_string)));
            }
        }
    }
    found
}

/// Points a loader of `prompt` at the input `name`: the one `node` says, else the one already naming
/// `name`, else the only loader not yet given a file (`taken`). Returns the node used.
pub fn use_input(
    prompt: &mut Value,
    node: Option<&str>,
    name: &str,
    taken: &[String],
) -> Result<String, String> {
    let all = loaders(prompt);
    let chosen = match node {
        Some(node) => all
            .iter()
            .find(|(id, _, _)| id == node)
            .ok_or_else(|| {
                format!(
                    "node {node} does not load a file (loaders here: {})",
                    describe(&all)
                )
            })?
            .clone(),
        None => match all.iter().find(|(_, _, v)| v.as_deref() == Some(name)) {
            Some(found) => found.clone(),
            None => {
                let free: Vec<_> = all.iter().filter(|(id, _, _)| !taken.contains(id)).collect();
                match free.as_slice() {
                    [one] => (*one).clone(),
                    [] if all.is_empty() => {
                        return Err(format!(
                            "the workflow has no node that loads a file (LoadImage, LoadAudio, …) to give '{name}' to"
                        ));
                    }
                    [] => {
                        return Err(format!(
                            "every loader already has a file; '{name}' is one too many"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "the workflow has several loaders ({}); say which gets '{name}': --input NODE={name}",
                            describe(&all)
                        ));
                    }
                }
            }
        },
    };
    let (id, input, _) = chosen;
    prompt[id.as_str()]["inputs"][input.as_str()] = Value::String(name.to_string());
    Ok(id)
}

fn describe(all: &[(String, String, Option<String>)]) -> String {
    if all.is_empty() {
        return "none".into();
    }
    all.iter()
        .map(|(id, input, _)| format!("node {id} `{input}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_args_name_an_optional_node() {
        assert_eq!(
            parse_input_arg("1=shot.png").unwrap(),
            InputArg {
                node: Some("1".into()),
                file: "shot.png".into()
            }
        );
        assert_eq!(parse_input_arg("dir/a=b.png").unwrap().node, None);
        assert_eq!(parse_input_arg("shot.png").unwrap().node, None);
        assert!(parse_input_arg("").is_err());
    }

    #[test]
    fn the_only_loader_gets_the_file_and_several_need_a_node() {
        let mut one = json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}
        });
        assert_eq!(use_input(&mut one, None, "mine.png", &[]).unwrap(), "1");
        assert_eq!(one["1"]["inputs"]["image"], "mine.png");

        let mut two = json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
            "4": {"class_type": "LoadImage", "inputs": {"image": "b.png"}}
        });
        let err = use_input(&mut two, None, "mine.png", &[]).unwrap_err();
        assert!(err.contains("--input NODE=mine.png"), "{err}");
        assert_eq!(use_input(&mut two, Some("4"), "mine.png", &[]).unwrap(), "4");
        assert_eq!(two["4"]["inputs"]["image"], "mine.png");
        // Already named: nothing to choose.
        assert_eq!(use_input(&mut two, None, "a.png", &[]).unwrap(), "1");
        // One given already: the other is the only free one.
        assert_eq!(use_input(&mut two, None, "c.png", &["4".into()]).unwrap(), "1");
        assert!(use_input(&mut two, Some("9"), "x.png", &[]).is_err());

        let mut none = json!({"1": {"class_type": "EmptyImage", "inputs": {}}});
        assert!(
            use_input(&mut none, None, "x.png", &[])
                .unwrap_err()
                .contains("no node")
        );
    }
}
