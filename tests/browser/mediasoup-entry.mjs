// Bundled at test time by mediasoup.mjs (esbuild); the bundle is never committed.
export { Device, version } from 'mediasoup-client';
