use crate::driver::streams::unilocal::StreamUniLocalH3;
use crate::driver::streams::uniremote::StreamUniRemoteH3;
use crate::driver::streams::ProtoReadError;
use crate::driver::streams::ProtoWriteError;
use crate::driver::DriverError;
use crate::error::StreamWriteError;
use crate::VarInt;
use std::future::pending;
use tokio::sync::mpsc;
use tokio::sync::watch;
use wtransport_proto::bytes;
use wtransport_proto::error::ErrorCode;
use wtransport_proto::frame::Frame;
use wtransport_proto::frame::FrameKind;
use wtransport_proto::settings::Settings;
use wtransport_proto::stream_header::StreamKind;

pub struct LocalSettingsStream {
    stream: Option<StreamUniLocalH3>,
    settings: Settings,
}

impl LocalSettingsStream {
    pub fn empty() -> Self {
        let settings = Settings::builder()
            .qpack_max_table_capacity(VarInt::from_u32(0))
            .qpack_blocked_streams(VarInt::from_u32(0))
            .enable_connect_protocol() // TODO(biagio): it would be nice to have this only for server
            .enable_webtransport()
            .enable_h3_datagrams()
            .webtransport_max_sessions(VarInt::from_u32(1))
            .build();

        Self {
            stream: None,
            settings,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stream.is_none()
    }

    pub fn set_stream(&mut self, stream: StreamUniLocalH3) {
        assert!(matches!(stream.kind(), StreamKind::Control));
        self.stream = Some(stream);
    }

    pub async fn send_settings(&mut self) -> Result<(), DriverError> {
        match self
            .stream
            .as_mut()
            .expect("Cannot send settings on empty stream")
            .write_frame(self.settings.generate_frame())
            .await
        {
            Ok(()) => Ok(()),
            Err(ProtoWriteError::NotConnected) => Err(DriverError::NotConnected),
            Err(ProtoWriteError::Stopped) => {
                Err(DriverError::Proto(ErrorCode::ClosedCriticalStream))
            }
        }
    }

    pub async fn run(&mut self) -> DriverError {
        match self.stream.as_mut() {
            Some(stream) => match stream.stopped().await {
                StreamWriteError::NotConnected => DriverError::NotConnected,
                StreamWriteError::Closed | StreamWriteError::Stopped(_) => {
                    DriverError::Proto(ErrorCode::ClosedCriticalStream)
                }
                StreamWriteError::QuicProto => DriverError::Proto(ErrorCode::ClosedCriticalStream),
            },
            None => pending().await,
        }
    }
}

/// The peer's control stream.
///
/// Patched for the SFU (see vendor/README.md): the driver's `select!` loop drops `run()`
/// whenever another branch is ready, and `Frame::read_async` is not cancel-safe, so a
/// SETTINGS frame that arrived in two packets could lose its first bytes and the rest parsed
/// as garbage (seen as the connection closed with H3_FRAME_UNEXPECTED or H3_MISSING_SETTINGS).
/// Frames are now read by a task that owns the stream; `run()` only awaits a channel.
pub struct RemoteSettingsStream {
    frames: Option<mpsc::Receiver<Box<Result<Frame<'static>, DriverError>>>>,
    settings: watch::Sender<Option<Settings>>,
}

impl RemoteSettingsStream {
    pub fn empty() -> Self {
        Self {
            frames: None,
            settings: watch::channel(None).0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_none()
    }

    pub fn set_stream(&mut self, mut stream: StreamUniRemoteH3) {
        assert!(matches!(stream.kind(), StreamKind::Control));
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                let frame = read_frame(&mut stream).await;
                let failed = frame.is_err();
                // The driver is gone (receiver dropped) or the stream failed: stop reading.
                if tx.send(Box::new(frame)).await.is_err() || failed {
                    return;
                }
            }
        });
        self.frames = Some(rx);
    }

    pub fn subscribe(&self) -> RemoteSettingsWatcher {
        RemoteSettingsWatcher(self.settings.subscribe())
    }

    pub async fn run(&mut self) -> DriverError {
        let Some(frames) = self.frames.as_mut() else {
            return pending().await;
        };
        loop {
            // `recv` is cancel-safe: a frame is either delivered or stays queued.
            let frame = match frames.recv().await.map(|frame| *frame) {
                Some(Ok(frame)) => frame,
                Some(Err(driver_error)) => return driver_error,
                None => return DriverError::NotConnected,
            };

            if self.settings.borrow().is_none() {
                if !matches!(frame.kind(), FrameKind::Settings) {
                    return DriverError::Proto(ErrorCode::MissingSettings);
                }

                let settings = match Settings::with_frame(&frame) {
                    Ok(settings) => settings,
                    Err(error_code) => return DriverError::Proto(error_code),
                };

                self.settings.send_replace(Some(settings));
            } else if !matches!(frame.kind(), FrameKind::Exercise(_)) {
                return DriverError::Proto(ErrorCode::FrameUnexpected);
            }
        }
    }
}

async fn read_frame(stream: &mut StreamUniRemoteH3) -> Result<Frame<'static>, DriverError> {
    match stream.read_frame().await {
        Ok(frame) => Ok(frame),
        Err(ProtoReadError::H3(error_code)) => Err(DriverError::Proto(error_code)),
        Err(ProtoReadError::IO(io_error)) => match io_error {
            bytes::IoReadError::ImmediateFin
            | bytes::IoReadError::UnexpectedFin
            | bytes::IoReadError::Reset => {
                Err(DriverError::Proto(ErrorCode::ClosedCriticalStream))
            }
            bytes::IoReadError::NotConnected => Err(DriverError::NotConnected),
        },
    }
}

pub struct RemoteSettingsWatcher(watch::Receiver<Option<Settings>>);

impl RemoteSettingsWatcher {
    pub async fn accept_settings(&mut self) -> Option<Settings> {
        self.0.changed().await.ok()?;

        Some(
            self.0
                .borrow()
                .clone()
                .expect("On change settings must be set"),
        )
    }
}
