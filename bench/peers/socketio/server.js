// The Socket.IO side of the fan-out comparison (`ferry bench --scenario fanout`): every client
// joins one room, and a `change` from any client is relayed to every other member of the room,
// as Ferry relays a write to the other watchers of its file. The writer gets an acknowledgement
// once the change is handed to the room. Nothing is stored: Socket.IO does strictly less work
// than Ferry here (no write-ahead log, no revision, no history).
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 0);
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  maxHttpBufferSize: 1e6,
});
io.on("connection", (socket) => {
  socket.join("bench");
  socket.on("change", (message, ack) => {
    socket.to("bench").emit("change", message);
    if (typeof ack === "function") ack(message.seq);
  });
});
httpServer.listen(port, "127.0.0.1", () => {
  console.log(`socket.io serving http://127.0.0.1:${httpServer.address().port}`);
});
process.on("SIGTERM", () => {
  io.close();
  httpServer.close(() => process.exit(0));
});
