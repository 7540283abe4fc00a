// Render the math pymdownx.arithmatex (generic mode) leaves as \( … \) and \[ … \] with the
// vendored KaTeX (docs/assets/katex/): no network.
document$.subscribe(function () {
  renderMathInElement(document.body, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  });
});
