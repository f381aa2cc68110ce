// HS256 JWT check shared by the Node peers (node:crypto only): the same claims
// the gateway requires of a bench token — a valid signature and a future `exp`.
import { createHmac, timingSafeEqual } from "node:crypto";

export function verify(token, secret) {
  const [h, p, s] = String(token ?? "").split(".");
  if (!s) return null;
  const expected = createHmac("sha256", secret).update(`${h}.${p}`).digest();
  const given = Buffer.from(s, "base64url");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  const claims = JSON.parse(Buffer.from(p, "base64url").toString());
  return claims.exp * 1000 > Date.now() ? claims : null;
}
