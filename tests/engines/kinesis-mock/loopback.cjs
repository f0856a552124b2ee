// Preloaded into kinesis-mock (`node --require`): its servers listen on 127.0.0.1 only.
// kinesis-mock binds every interface (0.0.0.0, not configurable); our tests' servers stay on
// loopback. A listen call without a host gets 127.0.0.1.
"use strict";
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const [first, second] = args;
  if (typeof first === "number" && (args.length === 1 || typeof second === "function")) {
    args.splice(1, 0, "127.0.0.1");
  } else if (first !== null && typeof first === "object" && "port" in first && !first.host) {
    args[0] = { ...first, host: "127.0.0.1" };
  }
  return listen.apply(this, args);
};
