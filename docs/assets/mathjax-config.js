// MathJax 3, served by the site itself (website/hooks.py copies it from the django-static-mathjax package).
// It typesets the notebooks (TeX between $ or $$, as in Jupyter) and the Markdown pages (the spans that
// pymdownx.arithmatex writes), and nothing else: a dollar sign anywhere else stays a dollar sign.
window.MathJax = {
  tex: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: { ignoreHtmlClass: "md-typeset", processHtmlClass: "arithmatex|jupyter-wrapper" },
  svg: { fontCache: "global" },
};
