// Reconnect delays: exponential backoff with full jitter (a uniform draw
// between zero and the capped exponential), as the Rust client does.

export interface BackoffOptions {
  /** Cap of the first delay, ms (default 1000). */
  initialMs?: number;
  /** No delay is longer, ms (default 30000). */
  maxMs?: number;
  /** Failures in a row before giving up (default: never). */
  maxAttempts?: number;
}

export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  readonly maxAttempts: number | undefined;

  constructor(options: BackoffOptions = {}, private readonly random: () => number = Math.random) {
    this.initialMs = options.initialMs ?? 1000;
    this.maxMs = options.maxMs ?? 30000;
    this.maxAttempts = options.maxAttempts;
  }

  /** The ceiling of attempt `attempt` (0-based). */
  ceiling(attempt: number): number {
    return Math.min(this.maxMs, this.initialMs * 2 ** Math.min(attempt, 30));
  }

  /** A delay for attempt `attempt`, uniform in 0..ceiling. */
  delay(attempt: number): number {
    return Math.floor(this.ceiling(attempt) * this.random());
  }

  exhausted(failures: number): boolean {
    return this.maxAttempts !== undefined && failures >= this.maxAttempts;
  }
}
