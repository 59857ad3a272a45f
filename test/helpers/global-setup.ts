import { buildC } from './fixtures.js';

/** Build the C fixtures once, before any worker starts, so parallel suites never race on gcc. */
export default function setup(): void {
  buildC('test/fixtures/fc-client.c');
}
