// Generated from clients/js by `npm run build`; edit the TypeScript there, not this file.
// Reconnect delays: exponential backoff with full jitter (a uniform draw
// between zero and the capped exponential), as the Rust client does.
export class Backoff {
    constructor(options = {}, random = Math.random) {
        this.random = random;
        this.initialMs = options.initialMs ?? 1000;
        this.maxMs = options.maxMs ?? 30000;
        this.maxAttempts = options.maxAttempts;
    }
    /** The ceiling of attempt `attempt` (0-based). */
    ceiling(attempt) {
        return Math.min(this.maxMs, this.initialMs * 2 ** Math.min(attempt, 30));
    }
    /** A delay for attempt `attempt`, uniform in 0..ceiling. */
    delay(attempt) {
        return Math.floor(this.ceiling(attempt) * this.random());
    }
    exhausted(failures) {
        return this.maxAttempts !== undefined && failures >= this.maxAttempts;
    }
}
