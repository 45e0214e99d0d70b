// The page's Markdown renderer: what a reply may format, and what it can never become.

import assert from "node:assert/strict";
import { test } from "node:test";

import { parse, safeHref } from "../../src/tokenrelay/web/markdown.js";

/** Every element in a parsed tree, depth first. */
function* elements(nodes) {
  for (const node of nodes) {
    if (typeof node === "string") continue;
    yield node;
    yield* elements(node.children);
  }
}

function text(nodes) {
  return nodes.map((n) => (typeof n === "string" ? n : text(n.children))).join("");
}

test("HTML in a reply stays text", () => {
  const reply =
    '<img src=x onerror="alert(1)"> <script>alert(2)</script> <a href="javascript:x">y</a>';
  const tree = parse(reply);
  assert.deepEqual([...elements(tree)].map((e) => e.tag), ["p"]);
  assert.equal(text(tree), reply);
});

test("links are http(s) only, and open with noopener noreferrer", () => {
  const tree = parse(
    "[ok](https://example.com/a?b=1) [js](javascript:alert(1)) [data](data:text/html,x) " +
      "[rel](/relative) <https://example.org> see http://example.net/path.",
  );
  const links = [...elements(tree)].filter((e) => e.tag === "a");
  assert.deepEqual(
    links.map((a) => a.attrs.href),
    ["https://example.com/a?b=1", "https://example.org/", "http://example.net/path"],
  );
  for (const a of links) assert.equal(a.attrs.rel, "noopener noreferrer");
  assert.match(text(tree), /\[js\]\(javascript:alert\(1\)\)/);
  assert.equal(safeHref(" JavaScript:alert(1)"), null);
  assert.equal(safeHref("https://exa mple.com"), null);
});

test("code blocks keep their text exactly, markup and all", () => {
  const tree = parse("```html\n<b>**not bold**</b>\n  indented\n```\nafter");
  assert.equal(tree[0].tag, "pre");
  assert.deepEqual(tree[0].children[0], {
    tag: "code",
    attrs: { class: "language-html" },
    children: ["<b>**not bold**</b>\n  indented"],
  });
  assert.equal(tree[1].tag, "p");
});

test("a code fence still open mid-stream is code to the end", () => {
  const tree = parse("Here:\n```py\nprint('hi')");
  assert.deepEqual(
    tree.map((n) => n.tag),
    ["p", "pre"],
  );
});

test("a language name cannot smuggle attributes", () => {
  const tree = parse('```x"onload="y\ncode\n```');
  assert.equal(tree[0].children[0].attrs.class, "language-xonloady");
});

test("inline code, bold, italic, strikethrough", () => {
  const [p] = parse("a `<i>` **b** *c* _d_ ~~e~~ snake_case_name");
  assert.deepEqual(
    p.children.filter((n) => typeof n !== "string").map((n) => [n.tag, text(n.children)]),
    [
      ["code", "<i>"],
      ["strong", "b"],
      ["em", "c"],
      ["em", "d"],
      ["del", "e"],
    ],
  );
  assert.match(text([p]), /snake_case_name$/);
});

test("lists nest by indentation and ordered lists keep their start", () => {
  const tree = parse("- a\n- b\n  - b1\n  - b2\n- c\n\n3. three\n4. four");
  assert.deepEqual(
    tree.map((n) => [n.tag, n.attrs.start]),
    [
      ["ul", undefined],
      ["ol", "3"],
    ],
  );
  const [a, b, c] = tree[0].children;
  assert.deepEqual([text([a]), text([c])], ["a", "c"]);
  assert.equal(b.children[1].tag, "ul");
  assert.equal(b.children[1].children.length, 2);
});

test("headings, quotes, rules and line breaks", () => {
  const tree = parse("## Title\n> quoted\n\n---\nline one\nline two");
  assert.deepEqual(
    tree.map((n) => n.tag),
    ["h2", "blockquote", "hr", "p"],
  );
  assert.deepEqual(
    tree[3].children.map((n) => (typeof n === "string" ? n : n.tag)),
    ["line one", "br", "line two"],
  );
});

test("an unclosed emphasis marker mid-stream is shown as written", () => {
  assert.deepEqual(parse("so **far"), [{ tag: "p", attrs: {}, children: ["so **far"] }]);
});
