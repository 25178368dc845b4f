// Compiled by tests/test_browser_library.py with tsc --noEmit: the typings describe the library as the docs use it.
import { RedMessenger, Channel, Envelope } from "../../redmessenger/static/redmessenger";

async function main(): Promise<void> {
  const rm = new RedMessenger({ clientAuth: "token", uid: "alice", key: "k" });
  rm.on("state", (state) => console.log(state.toUpperCase()));
  rm.on("error", (error) => console.log(error.code, error.message));
  rm.onMessage((envelope: Envelope) => { rm.notify(envelope, "New message"); });
  const room: Channel<{ text: string }> = await rm.subscribe<{ text: string }>("room", (data, envelope) => {
    console.log(data.text, envelope.sender?.uid, envelope.bubble);
  });
  const published: void = await room.publish({ text: "hi" });  // resolves with nothing (the JS too)
  console.log(published === undefined);
  console.log(room.mode === "read_only");
  await room.unsubscribe();
  rm.disconnect();
}
main();
