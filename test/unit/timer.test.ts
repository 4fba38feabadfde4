import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { timer, type Observable } from 'rxjs';
import { timerAt } from '../../src/time/timer.js';

const DAY = 86_400_000;

/** Resolves with whether `source` emitted within `ms` of real time, then unsubscribes. */
function firesWithin(source: Observable<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const subscription = source.subscribe(() => {
      clearTimeout(guard);
      subscription.unsubscribe();
      resolve(true);
    });
    const guard = setTimeout(() => {
      subscription.unsubscribe();
      resolve(false);
    }, ms);
  });
}

describe('timerAt', () => {
  // Node prints a TimeoutOverflowWarning for the plain timer; it is the point of the test.
  process.removeAllListeners('warning');

  it('a plain RxJS timer 30 days ahead fires at once (the overflow this guards against)', async () => {
    assert.equal(await firesWithin(timer(new Date(Date.now() + 30 * DAY)), 300), true);
  });

  it('a wait 30 days ahead does not fire early', async () => {
    assert.equal(await firesWithin(timerAt(Date.now() + 30 * DAY), 300), false);
  });

  it('waits 400 days ahead in legal chunks without firing', async () => {
    assert.equal(await firesWithin(timerAt(Date.now() + 400 * DAY), 300), false);
  });

  it('chains chunks and fires at the instant, reading the clock before each chunk', async () => {
    const start = Date.now();
    const at = start + 250;
    const fired = await new Promise<number>((resolve) => {
      timerAt(at, { maxChunkMs: 60 }).subscribe((reading) => resolve(reading));
    });
    assert.ok(fired >= at, `fired ${at - fired} ms early`);
    assert.ok(fired - at < 200, `fired ${fired - at} ms late`);
  });

  it('fires at once, asynchronously, for an instant already past', async () => {
    let fired = false;
    const subscription = timerAt(Date.now() - 5000).subscribe(() => (fired = true));
    assert.equal(fired, false, 'not synchronously');
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(fired, true);
    subscription.unsubscribe();
  });
});
