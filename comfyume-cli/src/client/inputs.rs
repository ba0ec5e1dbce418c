//! The caller's inputs: upload, list, delete (`/api/v1/inputs`).

use reqwest::Method;
use serde::Deserialize;

use super::{Client, ClientError, Result, read_json};

/// One stored input, as the server lists it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct InputView {
    /// Its name: what a workflow's loader names.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was last written, in milliseconds since the Unix epoch.
    pub modified: u64,
    /// Where to download it, relative to the server.
    pub url: String,
}

#[derive(Deserialize)]
struct InputList {
    inputs: Vec<InputView>,
}

impl Client {
    /// `POST /api/v1/inputs`: uploads `data` as the caller's input `name` (replacing one of that name).
    pub async fn upload_input(&self, name: &str, data: Vec<u8>) -> Result<InputView> {
        let part = reqwest::multipart::Part::bytes(data).file_name(name.to_string());
        let form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("name", name.to_string());
        let response = self
            .http
            .post(format!("{}/api/v1/inputs", self.base))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await
            .map_err(|e| ClientError::from_reqwest(&self.base, e))?;
        read_json(&self.base, response).await
    }

    /// `GET /api/v1/inputs`: the caller's inputs, by name.
    pub async fn inputs(&self) -> Result<Vec<InputView>> {
        let list: InputList = self.call(Method::GET, "/api/v1/inputs", None).await?;
        Ok(list.inputs)
    }

    /// `DELETE /api/v1/inputs/{name}`.
    pub async fn delete_input(&self, name: &str) -> Result<()> {
        let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        let response = self
            .http
            .delete(format!("{}/api/v1/inputs/{encoded}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| ClientError::from_reqwest(&self.base, e))?;
        super::check_status(response).await.map(|_| ())
    }
}
