// A small Markdown renderer for model replies that cannot produce markup of its own.
//
// `parse()` turns text into a tree of {tag, attrs, children} with strings as text;
// `render()` builds DOM nodes from it with createElement and text nodes only. No string of
// the reply is ever parsed as HTML, so `<img onerror=…>` or `<script>` in a reply is text.
// Tags and attributes come from the allowlists below; links are http(s) only.
//
// Covered: fenced code, headings, lists (nested by indentation), block quotes, rules,
// paragraphs with line breaks, inline code, bold, italic, strikethrough, links, bare URLs.
// A half-streamed reply parses too: an unclosed fence is code to the end, an unclosed `**`
// is shown as it is until its closer arrives.

const TAGS = new Set([
  "p", "br", "strong", "em", "del", "code", "pre", "a", "ul", "ol", "li", "blockquote", "hr",
  "h1", "h2", "h3", "h4", "h5", "h6",
]);
const ATTRS = new Set(["href", "rel", "target", "class", "start"]);

const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( {0,12})([-*+]|\d{1,9}[.)])([ \t]+|$)(.*)$/;
const PUNCTUATION = /[!-/:-@[-`{-~]/;

function element(tag, children = [], attrs = {}) {
  return { tag, attrs, children };
}

function blank(line) {
  return line.trim() === "";
}

function indentOf(line) {
  return line.length - line.trimStart().length;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line);
}

/** Markdown text to a list of nodes (strings and elements). */
export function parse(text) {
  return blocks(String(text).split(/\r\n|\r|\n/));
}

function blocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i += 1;
      while (i < lines.length) {
        const close = lines[i].trim();
        if (close.startsWith(marker) && close.replaceAll(marker[0], "") === "") break;
        body.push(lines[i]);
        i += 1;
      }
      i += 1;
      const lang = fence[2].replace(/[^\w+-]/g, "").slice(0, 32);
      const attrs = lang ? { class: `language-${lang}` } : {};
      out.push(element("pre", [element("code", [body.join("\n")], attrs)]));
      continue;
    }
    if (blank(line)) {
      i += 1;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      out.push(element(`h${heading[1].length}`, inline(heading[2] ?? "")));
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      out.push(element("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && !blank(lines[i])) {
        body.push(lines[i].replace(QUOTE, ""));
        i += 1;
      }
      out.push(element("blockquote", blocks(body)));
      continue;
    }
    if (ITEM.test(line)) {
      i = list(lines, i, out);
      continue;
    }
    const body = [];
    while (i < lines.length && !blank(lines[i])) {
      if (body.length && (startsBlock(lines[i]) || ITEM.test(lines[i]))) break;
      body.push(lines[i].trim());
      i += 1;
    }
    out.push(element("p", inline(body.join("\n"))));
  }
  return out;
}

function list(lines, i, out) {
  const first = ITEM.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const baseIndent = first[1].length;
  const items = [];
  while (i < lines.length) {
    const item = ITEM.exec(lines[i]);
    if (!item || /\d/.test(item[2]) !== ordered || item[1].length > baseIndent + 3) break;
    const contentIndent = item[1].length + item[2].length + Math.min(item[3].length || 1, 4);
    const body = [item[4]];
    i += 1;
    while (i < lines.length) {
      const line = lines[i];
      if (blank(line)) {
        let next = i;
        while (next < lines.length && blank(lines[next])) next += 1;
        if (next < lines.length && indentOf(lines[next]) >= contentIndent) {
          body.push(...lines.slice(i, next));
          i = next;
          continue;
        }
        break;
      }
      if (indentOf(line) >= contentIndent) {
        body.push(line.slice(contentIndent));
      } else if (ITEM.test(line) || startsBlock(line)) {
        break;
      } else {
        body.push(line.trim());
      }
      i += 1;
    }
    const content = blocks(body);
    // A tight item's lone paragraph shows as plain text, not as a spaced-out paragraph.
    if (content[0]?.tag === "p") content.splice(0, 1, ...content[0].children);
    items.push(element("li", content));
    let next = i;
    while (next < lines.length && blank(lines[next])) next += 1;
    const sibling = next < lines.length && ITEM.exec(lines[next]);
    if (!sibling || sibling[1].length > baseIndent + 3) break;
    i = next;
  }
  const start = ordered ? Number.parseInt(first[2], 10) : 1;
  out.push(element(ordered ? "ol" : "ul", items, start !== 1 ? { start: String(start) } : {}));
  return i;
}

/** A link target, if it is an absolute http(s) URL; anything else is refused. */
export function safeHref(raw) {
  const text = String(raw).trim();
  if (!/^https?:\/\//i.test(text)) return null;
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function link(children, href) {
  return element("a", children, { href, rel: "noopener noreferrer", target: "_blank" });
}

const BARE_URL = /^https?:\/\/[^\s<>"]+/i;

/** Inline Markdown to nodes. */
export function inline(text, { links = true } = {}) {
  const out = [];
  let plain = "";
  const flush = () => {
    if (plain) out.push(plain);
    plain = "";
  };
  let i = 0;
  while (i < text.length) {
    const char = text[i];
    if (char === "\\" && PUNCTUATION.test(text[i + 1] ?? "")) {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    if (char === "\n") {
      flush();
      out.push(element("br"));
      i += 1;
      continue;
    }
    if (char === "`") {
      let run = 1;
      while (text[i + run] === "`") run += 1;
      const ticks = "`".repeat(run);
      let close = text.indexOf(ticks, i + run);
      while (close !== -1 && text[close + run] === "`") {
        let after = close;
        while (text[after] === "`") after += 1;
        close = text.indexOf(ticks, after);
      }
      if (close !== -1) {
        let code = text.slice(i + run, close).replaceAll("\n", " ");
        if (code.length > 2 && code.startsWith(" ") && code.endsWith(" ")) code = code.slice(1, -1);
        flush();
        out.push(element("code", [code]));
        i = close + run;
        continue;
      }
      plain += ticks;
      i += run;
      continue;
    }
    if (char === "*" || char === "_" || char === "~") {
      const span = emphasis(text, i, links);
      if (span) {
        flush();
        out.push(span.node);
        i = span.end;
        continue;
      }
    }
    if (links && char === "[") {
      const found = bracketLink(text, i);
      if (found) {
        flush();
        out.push(found.node);
        i = found.end;
        continue;
      }
    }
    if (links && char === "<") {
      const close = text.indexOf(">", i);
      const href = close === -1 ? null : safeHref(text.slice(i + 1, close));
      if (href && !/\s/.test(text.slice(i + 1, close))) {
        flush();
        out.push(link([text.slice(i + 1, close)], href));
        i = close + 1;
        continue;
      }
    }
    if (links && (char === "h" || char === "H") && !/\w/.test(text[i - 1] ?? "")) {
      const match = BARE_URL.exec(text.slice(i));
      if (match) {
        const url = trimUrl(match[0]);
        const href = safeHref(url);
        if (href) {
          flush();
          out.push(link([url], href));
          i += url.length;
          continue;
        }
      }
    }
    plain += char;
    i += 1;
  }
  flush();
  return out;
}

function trimUrl(url) {
  let end = url.length;
  while (end > 0 && /[.,;:!?'"*_~]/.test(url[end - 1])) end -= 1;
  let trimmed = url.slice(0, end);
  // A closing parenthesis belongs to the URL only when it opened one too.
  while (trimmed.endsWith(")") && count(trimmed, "(") < count(trimmed, ")")) {
    trimmed = trimmed.slice(0, -1);
  }
  return trimmed;
}

function count(text, char) {
  return text.split(char).length - 1;
}

function emphasis(text, i, links) {
  const char = text[i];
  const double = text[i + 1] === char;
  if (char === "~" && !double) return null;
  const marker = double ? char + char : char;
  const start = i + marker.length;
  if (start >= text.length || /\s/.test(text[start])) return null;
  // Underscores inside words (snake_case) are not emphasis.
  if (char === "_" && /\w/.test(text[i - 1] ?? "")) return null;
  let close = start;
  while (true) {
    close = text.indexOf(marker, close + 1);
    if (close === -1) return null;
    if (/\s/.test(text[close - 1])) continue;
    if (!double && text[close + 1] === char) {
      close += 1;
      continue;
    }
    if (char === "_" && /\w/.test(text[close + marker.length] ?? "")) continue;
    break;
  }
  const tag = char === "~" ? "del" : double ? "strong" : "em";
  return {
    node: element(tag, inline(text.slice(start, close), { links })),
    end: close + marker.length,
  };
}

function bracketLink(text, i) {
  let depth = 0;
  let close = -1;
  for (let j = i; j < text.length; j += 1) {
    if (text[j] === "\\") {
      j += 1;
    } else if (text[j] === "[") {
      depth += 1;
    } else if (text[j] === "]") {
      depth -= 1;
      if (depth === 0) {
        close = j;
        break;
      }
    }
  }
  if (close === -1 || text[close + 1] !== "(") return null;
  const end = text.indexOf(")", close + 2);
  if (end === -1) return null;
  const target = text.slice(close + 2, end).trim().split(/\s+/)[0] ?? "";
  const href = safeHref(target.replace(/^<|>$/g, ""));
  if (!href) return null;
  return { node: link(inline(text.slice(i + 1, close), { links: false }), href), end: end + 1 };
}

/** Nodes to a DocumentFragment of `document`, through createElement and text nodes only. */
export function render(text, document = globalThis.document) {
  const fragment = document.createDocumentFragment();
  for (const node of parse(text)) fragment.append(build(node, document));
  return fragment;
}

function build(node, document) {
  if (typeof node === "string") return document.createTextNode(node);
  if (!TAGS.has(node.tag)) return document.createTextNode("");
  const el = document.createElement(node.tag);
  for (const [name, value] of Object.entries(node.attrs)) {
    if (ATTRS.has(name)) el.setAttribute(name, value);
  }
  for (const child of node.children) el.append(build(child, document));
  return el;
}
