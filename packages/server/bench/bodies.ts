/**
 * Request bodies for the benchmarks: a tiny one (one short message), and a
 * realistic one, as an agent sends them: 2.3 KB, a system prompt and eight
 * more messages (tool calls and their results among them), three tools.
 */

export const TINY_BODY = JSON.stringify({ model: "gpt-4.1", messages: [{ role: "user", content: "Benchmark me." }] })

export const REALISTIC_BODY = JSON.stringify({
  model: "gpt-4.1",
  temperature: 0.2,
  max_tokens: 512,
  messages: [
    {
      role: "system",
      content:
        "You are the support assistant of an online shop. Answer in two or three sentences, in the customer's language. " +
        "Use the tools to look up orders and shipments; never guess an order's status. Addresses can only be changed " +
        "before an order ships; refunds need the order number and a reason."
    },
    { role: "user", content: "Hi, where is my order 40-1234? It was supposed to arrive yesterday and I need it for the weekend." },
    {
      role: "assistant",
      content: null,
      tool_calls: [{ id: "call_a1", type: "function", function: { name: "get_order", arguments: "{\"order_id\":\"40-1234\"}" } }]
    },
    {
      role: "tool",
      tool_call_id: "call_a1",
      content: "{\"order_id\":\"40-1234\",\"status\":\"shipped\",\"carrier\":\"DHL\",\"tracking\":\"JD0146000012345\",\"eta\":\"2026-11-28\",\"items\":2}"
    },
    { role: "assistant", content: "Your order shipped with DHL (tracking JD0146000012345). It was due on the 28th; let me check where it is now." },
    { role: "user", content: "Yes please, and can it be delivered to my office instead? 12 High Street, Leeds LS1 4AP." },
    {
      role: "assistant",
      content: null,
      tool_calls: [
        { id: "call_b2", type: "function", function: { name: "track_shipment", arguments: "{\"tracking\":\"JD0146000012345\"}" } }
      ]
    },
    {
      role: "tool",
      tool_call_id: "call_b2",
      content: "{\"last_scan\":\"Leeds depot\",\"at\":\"2026-11-29T07:40:00Z\",\"out_for_delivery\":true,\"redirect_possible\":false}"
    },
    { role: "user", content: "So it's out for delivery today? What happens if I'm not home?" }
  ],
  tools: [
    {
      type: "function",
      function: {
        name: "get_order",
        description: "Look up an order by its number: status, carrier, tracking number, items.",
        parameters: { type: "object", properties: { order_id: { type: "string", description: "e.g. 40-1234" } }, required: ["order_id"] }
      }
    },
    {
      type: "function",
      function: {
        name: "track_shipment",
        description: "The carrier's latest scan of a shipment.",
        parameters: { type: "object", properties: { tracking: { type: "string" } }, required: ["tracking"] }
      }
    },
    {
      type: "function",
      function: {
        name: "request_refund",
        description: "Open a refund for an order.",
        parameters: {
          type: "object",
          properties: { order_id: { type: "string" }, reason: { type: "string", enum: ["late", "damaged", "wrong_item", "other"] } },
          required: ["order_id", "reason"]
        },
        strict: true
      }
    }
  ],
  tool_choice: "auto"
})
