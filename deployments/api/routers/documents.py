"""Documents in a collection."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path

from deployments.api import schemas
from deployments.api.params import AppId, CollectionId, Mem, PageNumber, PageSize, Reverse, UserId
from deployments.api.ratelimit import admitted
from storage import documents as store

router = APIRouter(
    prefix="/v1/apps/{app_id}/users/{user_id}/collections/{collection_id}/documents",
    tags=["documents"],
    dependencies=[Depends(admitted)],
)


@router.post("/list", response_model=schemas.Page[schemas.Document])
async def get_documents(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    collection_id: CollectionId,
    options: Annotated[
        schemas.DocumentGet | None, Body(description="Filtering options for the documents list")
    ] = None,
    reverse: Reverse = False,
    page: PageNumber = 1,
    size: PageSize = 50,
) -> schemas.Page[schemas.Document]:
    """Get all of the Documents in a Collection"""
    filter = options.filter if options else None
    result = await memory.run(
        store.list_documents,
        app_id,
        user_id,
        collection_id,
        filter=filter,
        reverse=bool(reverse),
        page=page,
        size=size,
    )
    return schemas.page_of(schemas.Document, result)


@router.get("/{document_id}", response_model=schemas.Document)
async def get_document(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    collection_id: CollectionId,
    document_id: Annotated[str, Path(description="ID of the document to retrieve")],
) -> schemas.Document:
    """Get a document by ID"""
    document = await memory.run(store.get_document, app_id, user_id, collection_id, document_id)
    return schemas.Document.from_row(document)


@router.put("/{document_id}", response_model=schemas.Document)
async def update_document(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    collection_id: CollectionId,
    document_id: Annotated[str, Path(description="ID of the document to update")],
    document: Annotated[schemas.DocumentUpdate, Body(description="Updated document parameters")],
) -> schemas.Document:
    """Update the content and/or the metadata of a Document"""
    updated = await memory.update_document(
        app_id, user_id, collection_id, document_id, content=document.content, metadata=document.metadata
    )
    return schemas.Document.from_row(updated)


@router.delete("/{document_id}", response_model=None)
async def delete_document(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    collection_id: CollectionId,
    document_id: Annotated[str, Path(description="ID of the document to delete")],
) -> dict[str, Any]:
    """Delete a Document by ID"""
    await memory.delete_document(app_id, user_id, collection_id, document_id)
    return {"message": "Document deleted successfully"}


@router.post("/query", response_model=list[schemas.Document])
async def query_documents(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    collection_id: CollectionId,
    options: Annotated[schemas.DocumentQuery, Body(description="Query parameters for document search")],
) -> list[schemas.Document]:
    """Cosine Similarity Search for Documents: the ``top_k`` closest to ``query``, best first, among those
    whose metadata contains ``filter``."""
    found = await memory.query_documents(
        app_id=app_id,
        user_id=user_id,
        collection_id=collection_id,
        query=options.query,
        top_k=options.top_k,
        filter=options.filter,
    )
    return [schemas.Document.from_row(d) for d in found]


@router.post("", response_model=schemas.Document)
async def create_document(
    memory: Mem,
    app_id: AppId,
    user_id: UserId,
    collection_id: CollectionId,
    document: Annotated[schemas.DocumentCreate, Body(description="Document creation parameters")],
) -> schemas.Document:
    """Embed text as a vector and create a Document (queryable as soon as this returns)"""
    created = await memory.add_document(
        app_id, user_id, collection_id, content=document.content, metadata=document.metadata
    )
    return schemas.Document.from_row(created)
